import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from soundsmith.train import speech
from soundsmith.train.speech import LANGUAGES, RATES, VOICE_VARIANTS, render_speech, sentences

LABEL_KEYS = {"domain", "language", "language_name", "voice", "voice_variant", "rate_wpm", "rate", "pitch",
              "pitch_range", "text"}


def _digest(wave: np.ndarray) -> str:
    return hashlib.sha256(wave.tobytes()).hexdigest()


@pytest.mark.parametrize(("duration", "sr"), [(2.0, 16000), (1.37, 22050), (0.5, 44100), (0.2, 8000)])
def test_length_level_and_labels(duration, sr):
    wave, labels = render_speech(np.random.default_rng(1), duration, sr)
    assert wave.dtype == np.float32 and wave.shape == (round(duration * sr),)
    assert np.isfinite(wave).all()
    assert 0.5 < np.abs(wave).max() <= 0.99
    assert np.sqrt(np.mean(wave**2)) > 1e-3
    assert set(labels) == LABEL_KEYS
    assert labels["domain"] == "speech" and labels["language_name"] == LANGUAGES[labels["language"]]
    assert labels["voice_variant"] in VOICE_VARIANTS[labels["voice"]]
    lo, hi = RATES[labels["rate"]]
    assert lo <= labels["rate_wpm"] <= hi
    assert labels["text"]
    json.dumps(labels)  # JSON-serialisable


def test_same_rng_same_bytes_in_any_order_and_process():
    a = render_speech(np.random.default_rng(7), 2.0, 16000)
    render_speech(np.random.default_rng(8), 1.0, 16000, language="fr")  # espeak state must not leak
    b = render_speech(np.random.default_rng(7), 2.0, 16000)
    assert _digest(a[0]) == _digest(b[0]) and a[1] == b[1]
    assert _digest(render_speech(np.random.default_rng(9), 2.0, 16000)[0]) != _digest(a[0])
    code = ("import hashlib, numpy as np; from soundsmith.train.speech import render_speech; "
            "print(hashlib.sha256(render_speech(np.random.default_rng(7), 2.0, 16000)[0].tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == _digest(a[0])


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_every_language_speaks(language):
    wave, labels = render_speech(np.random.default_rng(3), 1.5, 16000, language=language)
    assert labels["language"] == language
    assert np.sqrt(np.mean(wave**2)) > 1e-2
    # the heard text is the start of sentences from this language's list
    first = labels["text"].split(". ")[0].rstrip(".?!")
    assert any(s.startswith(first) for s in sentences()[language])


def test_overrides_keep_the_rest_of_the_draw():
    base = render_speech(np.random.default_rng(5), 1.0, 16000)[1]
    forced = render_speech(np.random.default_rng(5), 1.0, 16000, voice="male", rate="slow", language="de")[1]
    assert (forced["voice"], forced["rate"], forced["language"]) == ("male", "slow", "de")
    assert forced["pitch"] == base["pitch"] and forced["pitch_range"] == base["pitch_range"]


def test_voices_and_rates_differ():
    female = render_speech(np.random.default_rng(2), 3.0, 16000, language="en-us", voice="female", rate="normal")
    male = render_speech(np.random.default_rng(2), 3.0, 16000, language="en-us", voice="male", rate="normal")
    assert female[1]["voice_variant"].startswith("f") and male[1]["voice_variant"].startswith("m")
    slow = render_speech(np.random.default_rng(2), 6.0, 16000, language="en-us", rate="slow")[1]
    fast = render_speech(np.random.default_rng(2), 6.0, 16000, language="en-us", rate="fast")[1]
    assert len(fast["text"]) > len(slow["text"])  # more words fit at a faster rate


def test_short_leading_silence_and_clip_is_filled():
    for seed in range(4):
        wave, _ = render_speech(np.random.default_rng(seed), 4.0, 16000)
        loud = np.flatnonzero(np.abs(wave) > 0.02)
        assert loud[0] < 0.25 * 16000  # speech starts within 250 ms
        assert loud[-1] > 3.0 * 16000  # and the clip is filled, not padded with silence


def test_sentence_lists():
    data = sentences()
    assert set(data) == set(LANGUAGES) and len(LANGUAGES) >= 5
    for lang, lines in data.items():
        assert len(lines) >= 25, lang
        assert len(set(lines)) == len(lines), lang


def test_long_clip_cycles_sentences():
    wave, labels = render_speech(np.random.default_rng(0), 120.0, 8000, rate="fast")
    assert wave.shape == (960_000,)
    assert labels["text"].count(".") + labels["text"].count("?") > 30  # more than one pass over the list


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"duration_s": 0.0}, "duration_s"), ({"duration_s": 1e4}, "duration_s"),
    ({"language": "xx"}, "language must be one of"), ({"voice": "child"}, "voice must be one of"),
    ({"rate": "very fast"}, "rate must be one of"), ({"sample_rate": 0}, "sample_rate"),
])
def test_bad_arguments(kwargs, match):
    args = {"duration_s": 1.0, "sample_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=match):
        render_speech(np.random.default_rng(0), **args)


def test_library_is_released_after_each_clip():
    render_speech(np.random.default_rng(0), 0.5, 16000)
    assert not speech._is_mapped(speech._library_path())
    assert speech._LOCK.acquire(blocking=False)
    speech._LOCK.release()
