"""The label vocabulary of the synthesized corpus: the classes a clip can be labelled with, and the label
families a clip takes part in (what adherence and zero-shot accuracy are scored on).

The corpus renderers (train/sfx.py, train/music.py, train/speech.py) draw from these lists, and the
evaluation harness and label classifiers score against them; both read them here, so the harness
never imports the renderers. Pure data: changing a list changes the corpus (and its synth fingerprint).
"""

from __future__ import annotations

from soundsmith.core.captions import table

SFX_CLASSES: tuple[str, ...] = (
    "rain", "wind", "thunder", "ocean waves", "flowing water", "fire crackling", "engine", "car horn",
    "siren", "alarm", "phone ringing", "bell", "clock ticking", "footsteps", "knocking", "birds",
    "crickets", "applause", "dog barking", "glass breaking",
)
INSTRUMENTS: tuple[str, ...] = (
    "piano", "organ", "acoustic guitar", "electric guitar", "bass", "violin", "cello", "strings",
    "trumpet", "brass", "saxophone", "flute", "synth lead", "synth pad", "drums",
)
MODES: tuple[str, ...] = ("major", "minor")
# espeak voice code -> English name. Each needs a list in train/sentences.json.
LANGUAGES: dict[str, str] = {
    "en-us": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt-br": "Portuguese",
}

# label families scored by the harness; tempo is scored as a band (the caption templates' tempo bands)
FAMILIES = ("sfx_class", "instrument", "language", "tempo", "mode")


def tempo_bands() -> list[tuple[float, float, str]]:
    return [(float(lo), float(hi), str(name)) for lo, hi, name in table()["music"]["tempo_bands"]]


def tempo_band(bpm: float) -> str:
    return next(name for lo, hi, name in tempo_bands() if lo <= bpm < hi)


def family_of(labels: dict) -> dict[str, list[str]]:
    """The families a clip takes part in, with its true value(s) in each."""
    domain = labels.get("domain")
    if domain == "sfx":
        return {"sfx_class": list(labels.get("classes", []))}
    if domain == "music":
        out = {"instrument": list(labels.get("instruments", []))}
        if "tempo_bpm" in labels:
            out["tempo"] = [tempo_band(float(labels["tempo_bpm"]))]
        if "mode" in labels:
            out["mode"] = [str(labels["mode"])]
        return out
    if domain == "speech":
        return {"language": [str(labels.get("language"))]}
    return {}
