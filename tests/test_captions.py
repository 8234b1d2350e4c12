"""Captions: every label set gets a caption naming its instruments / classes / language; held-out
wordings never come out of the train style; same rng state, same caption."""

import itertools
import re

import numpy as np
import pytest
from soundsmith.core import captions
from soundsmith.core.captions import caption, class_caption, label_terms, table, template_slots, templates

# The canonical names of the corpus interface; the renderers may add more (checked below when importable).
INSTRUMENTS = ("piano", "organ", "acoustic guitar", "electric guitar", "bass", "violin", "cello", "strings",
               "trumpet", "brass", "saxophone", "flute", "synth lead", "synth pad", "drums")
STYLES = ("waltz", "rock", "ballad", "march", "ambient", "arpeggio")
SFX_CLASSES = ("rain", "wind", "thunder", "ocean waves", "flowing water", "fire crackling", "engine", "car horn",
               "siren", "alarm", "phone ringing", "bell", "clock ticking", "footsteps", "knocking", "birds",
               "crickets", "applause", "dog barking", "glass breaking")
LANGUAGES = {"en-us": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}
AUG = {"reverb": {"room_size": 0.8, "wet": 0.3, "damping": 0.5}, "gain_db": -2.0,
       "noise": {"kind": "brown", "snr_db": 20.0}}


def vocabulary():
    """Interface names plus whatever the renderers export."""
    inst, styles, classes, langs = list(INSTRUMENTS), list(STYLES), list(SFX_CLASSES), dict(LANGUAGES)
    try:
        from soundsmith.train import music
        inst += [i for i in music.INSTRUMENTS if i not in inst]
        styles += [s for s in music.STYLES if s not in styles]
    except ImportError:
        pass
    try:
        from soundsmith.train import sfx
        classes += [c for c in sfx.SFX_CLASSES if c not in classes]
    except ImportError:
        pass
    try:
        from soundsmith.train import speech
        langs.update(speech.LANGUAGES)
    except ImportError:
        pass
    return inst, styles, classes, langs


def music_labels(instruments, style="waltz", bpm=80.0, mode="minor", meter="3/4", loudness="soft"):
    return {"domain": "music", "instruments": list(instruments), "tempo_bpm": bpm, "key": "F#", "mode": mode,
            "time_signature": meter, "style": style, "loudness": loudness, "beats": [0.0], "downbeats": [0.0]}


def sfx_labels(classes, intensity="heavy", pitch="high", distance="far"):
    return {"domain": "sfx", "classes": list(classes), "intensity": intensity, "pitch": pitch, "distance": distance,
            "details": {}}


def speech_labels(code, name, voice="female", rate="fast"):
    return {"domain": "speech", "language": code, "language_name": name, "voice": voice, "voice_variant": "f1",
            "rate_wpm": 230, "rate": rate, "text": "..."}


def mentions(text, domain, label):
    return any(term in text.lower() for term in label_terms(domain, label))


def label_sets():
    inst, styles, classes, langs = vocabulary()
    out = [music_labels([i], style=s, bpm=b, mode=m) for i, s, b, m in
           zip(inst, itertools.cycle(styles), itertools.cycle([60.0, 100.0, 150.0]), itertools.cycle(["major", "minor"]))]
    out += [music_labels(inst[k:k + 3], style=styles[k % len(styles)]) for k in range(0, len(inst), 2)]
    out += [sfx_labels([c], intensity=i, pitch=p, distance=d) for c, i, p, d in
            zip(classes, itertools.cycle(["light", "moderate", "heavy"]), itertools.cycle(["low", "medium", "high"]),
                itertools.cycle(["near", "far"]))]
    out += [sfx_labels([a, b]) for a, b in zip(classes, classes[1:] + classes[:1])]
    out += [speech_labels(c, n, voice=v, rate=r) for (c, n), v, r in
            zip(langs.items(), itertools.cycle(["female", "male"]), itertools.cycle(["slow", "normal", "fast"]))]
    return out


def named_labels(labels):
    if labels["domain"] == "music":
        return [("music", i) for i in labels["instruments"]]
    if labels["domain"] == "sfx":
        return [("sfx", c) for c in labels["classes"]]
    return [("speech", labels["language"])]


@pytest.mark.parametrize("style", ["train", "heldout", "all"])
def test_every_label_set_gets_a_caption_that_names_it(style):
    rng = np.random.default_rng(0)
    for labels in label_sets():
        for k in range(25):
            with_aug = {**labels, "augmentation": AUG} if k % 2 else labels
            text = caption(with_aug, rng, style=style)
            assert text and text == text.strip() and "  " not in text and "{" not in text, text
            assert not re.search(r"\ba [aeiou]|\ban [bcdfgjklmnpqrstvwxz]", text), text  # a/an fixed
            assert not re.search(r",\s*,|\(\s*[,)]|\s[,.;:]", text), text
            for domain, label in named_labels(labels):
                assert mentions(text, domain, label), (label, text)


def test_every_template_fills_for_every_label_set():
    """Each template on its own: only known slots, and the filled text names the labels."""
    for domain, slots in captions.SLOTS.items():
        for t in templates(domain, "all"):
            assert template_slots(t) <= set(slots), (domain, t)
    rng = np.random.default_rng(1)
    for labels in label_sets():
        kind = None if labels["domain"] != "sfx" else ("mix" if len(labels["classes"]) > 1 else "single")
        for t in templates(labels["domain"], "all", kind):
            text = captions._fill(t, labels, rng)
            assert text and "{" not in text, (t, text)
            for domain, label in named_labels(labels):
                assert mentions(text, domain, label), (t, label, text)


def test_heldout_templates_never_come_out_of_train():
    for domain in captions.DOMAINS:
        train, heldout = set(templates(domain, "train")), set(templates(domain, "heldout"))
        assert train and heldout and not train & heldout
        assert set(templates(domain, "all")) == train | heldout
    rng = np.random.default_rng(2)
    for labels in label_sets():
        a = {caption(labels, rng, "train") for _ in range(30)}
        b = {caption(labels, rng, "heldout") for _ in range(30)}
        assert not a & b, a & b


def test_one_label_set_has_many_wordings_including_the_structured_style():
    rng = np.random.default_rng(3)
    labels = music_labels(["piano"], style="waltz", bpm=80.0, loudness="soft")
    texts = {caption(labels, rng) for _ in range(300)}
    assert len(texts) > 100
    assert any(re.fullmatch(r"[a-z ]+, 3/4, 80 bpm, [a-z -]+", t) for t in texts), sorted(texts)[:20]
    assert "piano, 3/4, 80 bpm, gentle" in texts


def test_captions_are_deterministic():
    for labels in label_sets()[::7]:
        assert caption(labels, np.random.default_rng(5)) == caption(labels, np.random.default_rng(5))


def test_augmentation_is_sometimes_mentioned():
    rng = np.random.default_rng(6)
    texts = [caption({**sfx_labels(["rain"]), "augmentation": AUG}, rng) for _ in range(200)]
    env = table()["environment"]
    phrases = env["reverb_large"] + env["noise"]["brown"]
    hits = sum(any(p in t for p in phrases) for t in texts)
    assert 50 < hits < 190


def test_the_vocabulary_has_caption_words():
    inst, styles, classes, langs = vocabulary()
    t = table()
    assert not [i for i in inst if i not in t["music"]["instruments"]]
    assert not [s for s in styles if s not in t["music"]["styles"]]
    assert not [c for c in classes if c not in t["sfx"]["classes"]]
    assert not [c for c in langs if c not in t["speech"]["languages"]]


def test_class_captions_are_canonical_and_distinct():
    inst, styles, classes, langs = vocabulary()
    caps = ([class_caption("music", i) for i in inst] + [class_caption("sfx", c) for c in classes]
            + [class_caption("speech", code) for code in langs])
    assert len(set(caps)) == len(caps) and all(caps)
    assert class_caption("sfx", "rain") == "the sound of rain"
    assert class_caption("sfx", "bell") == "the sound of a bell"
    assert class_caption("music", "piano") == "music played on piano"
    assert class_caption("speech", "de") == "a person speaking German"
    for c in classes:
        assert mentions(class_caption("sfx", c), "sfx", c)


@pytest.mark.parametrize("call,needle", [
    (lambda: caption({"domain": "noise"}, np.random.default_rng(0)), "labels['domain'] must be one of"),
    (lambda: caption(sfx_labels(["rain"]), np.random.default_rng(0), style="fancy"), "caption style must be one of"),
    (lambda: caption({"domain": "music", "style": "rock"}, np.random.default_rng(0)), "missing the field 'instruments'"),
    (lambda: class_caption("video", "x"), "domain must be one of"),
])
def test_mistakes_raise_value_errors(call, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        call()


def test_unknown_labels_fall_back_to_their_names():
    rng = np.random.default_rng(7)
    assert "kazoo" in caption(music_labels(["kazoo"], style="polka"), rng)
    assert "hail" in caption(sfx_labels(["hail"]), rng)
