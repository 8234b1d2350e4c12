"""Label set -> caption, from the templates and synonyms in `caption_templates.json`.

The corpus stores structured labels (see the corpus interface: music / sfx / speech label dicts plus
the `augmentation` record), and training draws a fresh caption from them every epoch, so one label
set has many wordings: "a slow waltz played on solo piano", "piano, 3/4, 80 bpm, gentle" (the
MusicCaps-like structured style), "a woman speaking German quickly", "rain while thunder rumbles".

Template styles:
- "train": the wordings training sees;
- "heldout": wordings never produced by "train" (paraphrase tests, benchmarks/prompts/adherence.jsonl);
- "all": both.

All randomness comes from the `rng` argument, so a caption is a pure function of (labels, rng state).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

CAPTION_STYLES = ("train", "heldout", "all")
DOMAINS = ("music", "sfx", "speech")
TEMPLATES_FILE = Path(__file__).with_name("caption_templates.json")

# The slots each domain's templates may use (a template naming another slot is a bug in the JSON).
SLOTS = {
    "music": ("instruments", "instrument_list", "style", "style_tag", "tempo", "bpm", "key", "mood",
              "loudness", "meter", "meter_tag"),
    "sfx": ("sound", "clause", "distance", "class_tag", "intensity_tag", "distance_tag",
            "sound_a", "sound_b", "clause_a", "clause_b", "class_tags"),
    "speech": ("speaker", "lang", "rate", "rate_tag", "voice_tag"),
}


@cache
def table() -> dict[str, Any]:
    """The parsed `caption_templates.json` (cached; treat as read-only)."""
    with open(TEMPLATES_FILE, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------ public API


def caption(labels: Mapping[str, Any], rng: np.random.Generator, style: str = "train") -> str:
    """One caption for `labels`, drawn from the templates of `style` ("train", "heldout" or "all").

    `labels` is a label dict of the corpus interface (its "domain" picks the templates). If it holds
    an "augmentation" record, a phrase about the room or background noise is sometimes appended.
    """
    return caption_and_template(labels, rng, style)[0]


def caption_and_template(labels: Mapping[str, Any], rng: np.random.Generator, style: str = "train"
                         ) -> tuple[str, str]:
    """`caption` and the template it filled (which slots it names: a caption that says "{tempo}" or "{bpm}"
    asks for its clip's tempo; one without them does not)."""
    domain = labels.get("domain")
    if domain not in DOMAINS:
        raise ValueError(f"labels['domain'] must be one of {', '.join(DOMAINS)}, got {domain!r}")
    kind = None
    if domain == "sfx":
        kind = "mix" if len(_classes(labels)) > 1 else "single"
    choices = templates(domain, style, kind)
    template = choices[int(rng.integers(len(choices)))]
    text = _fill(template, labels, rng)
    extra = _environment(labels.get("augmentation"), rng)
    if extra:
        text = f"{text}, {extra}"
    return text, template


def class_caption(domain: str, label: str) -> str:
    """The canonical caption of one class: an SFX class, an instrument (or a music style), a language.

    Used to rank class captions with CLAP (prompt adherence before a label classifier exists), so the
    wording is fixed: "the sound of rain", "music played on piano", "a person speaking German".
    """
    t = table()
    if domain == "sfx":
        return _tidy(f"the sound of {_class_entry(label)['np'][0].replace('{adj}', '')}")
    if domain == "music":
        if label in t["music"]["styles"]:
            return _tidy(f"a {t['music']['styles'][label]['noun'][0]}")
        return f"music played on {_synonyms('instrument', label)[0]}"
    if domain == "speech":
        return f"a person speaking {language_name(label)}"
    raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")


def templates(domain: str, style: str = "train", kind: str | None = None) -> list[str]:
    """The template strings of `domain` and `style`; for "sfx", `kind` is "single" or "mix" (default: both)."""
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {', '.join(CAPTION_STYLES)}, got {style!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    styles = ("train", "heldout") if style == "all" else (style,)
    out: list[str] = []
    for s in styles:
        entry = table()[domain]["templates"][s]
        if isinstance(entry, dict):  # sfx: {"single": [...], "mix": [...]}
            kinds = (kind,) if kind else ("single", "mix")
            if any(k not in entry for k in kinds):
                raise ValueError(f"sfx template kind must be 'single' or 'mix', got {kind!r}")
            for k in kinds:
                out.extend(entry[k])
        else:
            out.extend(entry)
    return out


def label_terms(domain: str, label: str) -> tuple[str, ...]:
    """Lower-case words a caption uses for one class/instrument/language (to check a caption mentions it)."""
    if domain == "sfx":
        entry = _class_entry(label)
        terms = [label] + [_strip_adj(p) for p in entry["np"]] + entry["clause"]  # the name: structured style
        return tuple(dict.fromkeys(t.lower() for t in terms))
    if domain == "music":
        return tuple(dict.fromkeys(_strip_article(s).lower() for s in [label, *_synonyms("instrument", label)]))
    if domain == "speech":
        return (language_name(label).lower(),)
    raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")


def language_name(code_or_name: str) -> str:
    """English name of an espeak voice code ("de" -> "German"); a name is returned as it is."""
    return table()["speech"]["languages"].get(code_or_name, code_or_name)


# -------------------------------------------------------------------------------------- slot filling


def _fill(template: str, labels: Mapping[str, Any], rng: np.random.Generator) -> str:
    domain = labels["domain"]
    slots = {"music": _music_slots, "sfx": _sfx_slots, "speech": _speech_slots}[domain](labels, rng)
    return _tidy(template.format_map(slots))


def _music_slots(labels: Mapping[str, Any], rng: np.random.Generator) -> dict[str, str]:
    t = table()["music"]
    instruments = list(_require(labels, "instruments", list))
    if not instruments:
        raise ValueError("music labels need a non-empty 'instruments' list")
    if len(instruments) > 1 and rng.random() < 0.5:  # word order varies; the label order is the mix order
        instruments = [instruments[i] for i in rng.permutation(len(instruments))]
    names = [_pick(rng, _synonyms("instrument", i)) for i in instruments]
    style = str(_require(labels, "style", str))
    style_entry = t["styles"].get(style, {"noun": [f"{style} piece"], "tag": [style], "mood": []})
    bpm = float(_require(labels, "tempo_bpm", (int, float, np.integer, np.floating)))
    band = next(name for low, high, name in t["tempo_bands"] if low <= bpm < high)
    mode = str(_require(labels, "mode", str))
    moods = t["mood"].get(mode, []) + style_entry["mood"]
    meter = str(labels.get("time_signature", "4/4"))
    loudness = str(labels.get("loudness", "medium"))
    solo = len(names) == 1 and rng.random() < 0.5
    return {
        "instruments": f"solo {names[0]}" if solo else _join(names),
        "instrument_list": ", ".join(names),
        "style": _pick(rng, style_entry["noun"]),
        "style_tag": _pick(rng, style_entry["tag"]),
        "tempo": _pick(rng, t["tempo"][band]),
        "bpm": f"{round(bpm)}",
        "key": f"{_require(labels, 'key', str)} {_pick(rng, t['mode'].get(mode, [mode]))}",
        "mood": _pick(rng, moods or ["pleasant"]),
        "loudness": _pick(rng, t["loudness"].get(loudness, [loudness])),
        "meter": _pick(rng, t["meter"].get(meter, [f"{meter} time"])),
        "meter_tag": meter,
    }


def _sfx_slots(labels: Mapping[str, Any], rng: np.random.Generator) -> dict[str, str]:
    t = table()["sfx"]
    classes = _classes(labels)
    intensity = str(labels.get("intensity", "moderate"))
    pitch = str(labels.get("pitch", "medium"))
    distance = str(labels.get("distance", "near"))
    # The first class is the foreground: only it takes the intensity/pitch adjectives.
    sounds = [_sound(c, intensity, pitch, rng) if k == 0 else _sound(c, None, None, rng)
              for k, c in enumerate(classes)]
    clauses = [_pick(rng, _class_entry(c)["clause"]) for c in classes]
    return {
        "sound": sounds[0],
        "clause": clauses[0],
        "distance": _pick(rng, t["distance"].get(distance, [distance])),
        "class_tag": classes[0],
        "intensity_tag": _pick(rng, t["intensity_tag"].get(intensity, [intensity])),
        "distance_tag": _pick(rng, t["distance_tag"].get(distance, [distance])),
        "sound_a": sounds[0],
        "sound_b": _join(sounds[1:]),
        "clause_a": clauses[0],
        "clause_b": _join(clauses[1:]),
        "class_tags": ", ".join(classes),
    }


def _sound(cls: str, intensity: str | None, pitch: str | None, rng: np.random.Generator) -> str:
    """A noun phrase for one SFX class with its adjectives: "a loud high-pitched siren" (none if None)."""
    t = table()["sfx"]
    entry = _class_entry(cls)
    words = []
    if intensity is not None:
        words.append(_pick(rng, entry.get("intensity", {}).get(intensity) or t["intensity"].get(intensity, [""])))
    if pitch is not None and entry.get("pitched") and rng.random() < 0.7:
        words.append(_pick(rng, t["pitch"].get(pitch, [""])))
    adj = " ".join(w for w in words if w)
    return _pick(rng, entry["np"]).replace("{adj}", f"{adj} " if adj else "")


def _speech_slots(labels: Mapping[str, Any], rng: np.random.Generator) -> dict[str, str]:
    t = table()["speech"]
    lang = labels.get("language_name") or language_name(str(_require(labels, "language", str)))
    voice = str(_require(labels, "voice", str))
    rate = str(labels.get("rate", "normal"))
    return {
        "speaker": _pick(rng, t["speaker"].get(voice, [f"a {voice} voice"])),
        "lang": str(lang),
        "rate": _pick(rng, t["rate"].get(rate, [rate])),
        "rate_tag": _pick(rng, t["rate_tag"].get(rate, [rate])),
        "voice_tag": _pick(rng, t["voice_tag"].get(voice, [voice])),
    }


def _environment(aug: Mapping[str, Any] | None, rng: np.random.Generator) -> str:
    """Sometimes (p = 0.5 each) mention the augmentation: reverb ("in a large hall"), noise ("with hiss")."""
    if not aug:
        return ""
    t = table()["environment"]
    parts = []
    reverb, noise = aug.get("reverb"), aug.get("noise")
    if reverb and rng.random() < 0.5:
        parts.append(_pick(rng, t["reverb_large"] if reverb.get("room_size", 0.5) >= 0.5 else t["reverb_small"]))
    if noise and rng.random() < 0.5:
        parts.append(_pick(rng, t["noise"].get(noise.get("kind"), t["noise"]["white"])))
    return " and ".join(parts)


# ------------------------------------------------------------------------------------------- helpers


def _classes(labels: Mapping[str, Any]) -> list[str]:
    classes = list(_require(labels, "classes", list))
    if not classes:
        raise ValueError("sfx labels need a non-empty 'classes' list")
    return classes


def _class_entry(cls: str) -> dict[str, Any]:
    entry = table()["sfx"]["classes"].get(cls)
    if entry is None:  # a class the renderer added without caption words: use its name as is
        return {"np": [f"{{adj}}{cls}"], "clause": [f"{cls} can be heard"]}
    return entry


def _synonyms(kind: str, name: str) -> list[str]:
    assert kind == "instrument"
    return table()["music"]["instruments"].get(name, [name])


def _require(labels: Mapping[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    if key not in labels:
        raise ValueError(f"{labels.get('domain')} labels are missing the field {key!r}")
    value = labels[key]
    if not isinstance(value, types) or isinstance(value, bool | np.bool_):
        raise ValueError(f"labels[{key!r}] has the wrong type: {type(value).__name__}")
    return value


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _strip_adj(phrase: str) -> str:
    """The head of an SFX noun phrase without its adjective slot and article: "a {adj}bell" -> "bell"."""
    head = phrase.split("{adj}")[-1].strip()
    return head or _strip_article(phrase.replace("{adj}", ""))


def _strip_article(phrase: str) -> str:
    return re.sub(r"^(a|an|the) ", "", phrase.strip())


_AN_EXCEPTIONS = ("uni", "uku", "use", "eu", "one")  # vowel letters with a consonant sound


def _article(word: str) -> str:
    w = word.lower()
    if w[0].isdigit():  # "an 80 bpm ...", "an 11/8 ...", "an 18 ..."
        return "an" if w.startswith("8") or re.match(r"1[18](\D|$)", w) else "a"
    return "an" if w[0] in "aeiou" and not w.startswith(_AN_EXCEPTIONS) else "a"


def _tidy(text: str) -> str:
    """Fix what empty slots and adjectives leave behind: spaces, commas, a/an."""
    text = " ".join(text.split())
    text = re.sub(r"\s+([,;:)])", r"\1", text)
    text = re.sub(r"([,;:])(?=[,;:)])", "", text)
    text = re.sub(r"\(\s*", "(", text).strip(" ,;:")
    return re.sub(r"\b(a|an) ([\w'/-]+)", lambda m: f"{_article(m.group(2))} {m.group(2)}", text)


def template_slots(template: str) -> set[str]:
    """Slot names used by a template string."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}
