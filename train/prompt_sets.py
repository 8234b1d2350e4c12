"""The standard prompt sets committed under benchmarks/prompts/.

- adherence.jsonl: 2 prompts per SFX class, 1 per instrument, 1 per language, each
  {"prompt", "domain", "label"}, worded by the held-out caption style (wordings training never
  sees). Built from the renderers' vocabularies and a seed alone; the corpus is not read.
- adherence-tune.jsonl: the same families drawn again with another seed (no prompt shared with
  adherence.jsonl), for choosing settings — guidance, sampler steps, token sampling — without tuning on the
  prompts the figures are reported on.
- adherence-families.jsonl: what adherence.jsonl lacks, in the same held-out wording: two more wordings per
  instrument and three per language (`"domain"` + `"label"` as above), the tempo family (`"family":
  "tempo"`, a band of core.vocabulary.tempo_bands as `"label"`, 4 prompts per band over varied instruments
  and styles) and "X while Y" SFX mixtures (`"family": "mixture"`, the corpus labels dict with both classes:
  a clip adheres when both are heard). Mode has no prompts: neither label classifier has a mode family,
  so nothing independent of the prompt could judge it.
- corpus-test-200.jsonl: 200 test-split clips of the standard corpus, each
  {"prompt" (its caption), "file_name" (relative to the corpus), "domain", "index", "labels"}
  (labels without the beat lists, which only training uses).

Regenerate with `soundsmith data prompts data/corpus --out benchmarks/prompts` after building the
standard corpus (`soundsmith data synth --out data/corpus --hours 4 --seed 0`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.core.captions import caption, table
from soundsmith.core.files import write_text_atomic
from soundsmith.train.synth import read_spec

log = logging.getLogger(__name__)

NUM_TEST_PROMPTS = 200
SFX_PROMPTS_PER_CLASS = 2
EXTRA_WORDINGS = {"instrument": 2, "language": 3}  # adherence-families.jsonl, on top of adherence.jsonl's one
TEMPO_PROMPTS_PER_BAND = 4
MIXTURE_PROMPTS = 20
STANDARD_CORPUS = {"num_clips": 2880, "seed": 0, "clip_seconds": 5.0, "sample_rate": 16000,
                   "domains": ("music", "sfx", "speech"), "caption_style": "train"}
_DROPPED_LABELS = ("beats", "downbeats")


def write_prompt_sets(corpus: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write adherence.jsonl, adherence-tune.jsonl, adherence-families.jsonl and corpus-test-200.jsonl into
    `out` (created if missing); return their paths.

    Args:
        corpus: the standard corpus folder (its metadata.jsonl test split is sampled).
        out: output folder, e.g. benchmarks/prompts.
        seed: seed of the wording and of the test-clip sample (default 0).
    """
    corpus, out = Path(corpus), Path(out)
    ss_adherence, ss_test = np.random.SeedSequence([seed, 4]).spawn(2)  # independent: one can change alone
    test_rows = corpus_test_prompts(corpus, np.random.default_rng(ss_test))  # a bad corpus fails before `out` exists
    out.mkdir(parents=True, exist_ok=True)
    tune = adherence_prompts(np.random.default_rng(np.random.SeedSequence([seed + 7, 4])))  # its own stream
    paths = [_write_jsonl(out / "adherence.jsonl", adherence_prompts(np.random.default_rng(ss_adherence))),
             _write_jsonl(out / "adherence-tune.jsonl", tune),
             _write_jsonl(out / "adherence-families.jsonl",
                          family_prompts(np.random.default_rng(np.random.SeedSequence([seed + 13, 4])))),
             _write_jsonl(out / f"corpus-test-{NUM_TEST_PROMPTS}.jsonl", test_rows)]
    return paths


def adherence_prompts(rng: np.random.Generator) -> list[dict[str, str]]:
    """2 prompts per SFX class, 1 per instrument, 1 per language, in the held-out caption style."""
    from soundsmith.train import music, sfx, speech

    rows = []
    for cls in sfx.SFX_CLASSES:
        seen: set[str] = set()
        for _ in range(SFX_PROMPTS_PER_CLASS):
            labels = {"domain": "sfx", "classes": [cls], "intensity": _choice(rng, ("light", "moderate", "heavy")),
                      "pitch": _choice(rng, ("low", "medium", "high")), "distance": _choice(rng, ("near", "far"))}
            text = caption(labels, rng, style="heldout")
            for _ in range(20):  # two different wordings of the same class
                if text not in seen:
                    break
                text = caption(labels, rng, style="heldout")
            seen.add(text)
            rows.append({"prompt": text, "domain": "sfx", "label": cls})
    for instrument in music.INSTRUMENTS:
        labels = _music_labels(music, instrument, rng)
        rows.append({"prompt": caption(labels, rng, style="heldout"), "domain": "music", "label": instrument})
    for code, name in speech.LANGUAGES.items():
        labels = {"domain": "speech", "language": code, "language_name": name,
                  "voice": _choice(rng, ("female", "male")), "rate": _choice(rng, ("slow", "normal", "fast"))}
        rows.append({"prompt": caption(labels, rng, style="heldout"), "domain": "speech", "label": code})
    return rows


def family_prompts(rng: np.random.Generator) -> list[dict[str, Any]]:
    """adherence-families.jsonl (module docstring): more wordings per instrument and language, the tempo
    family, and two-class SFX mixtures, all in the held-out caption style."""
    from soundsmith.core.vocabulary import tempo_bands
    from soundsmith.train import music, sfx, speech

    rows: list[dict[str, Any]] = []
    for instrument in music.INSTRUMENTS:
        for text in _distinct(rng, lambda instrument=instrument: _music_labels(music, instrument, rng), EXTRA_WORDINGS["instrument"]):
            rows.append({"prompt": text, "domain": "music", "label": instrument})
    for code, name in speech.LANGUAGES.items():
        def speech_labels(code: str = code, name: str = name) -> dict[str, Any]:
            return {"domain": "speech", "language": code, "language_name": name,
                    "voice": _choice(rng, ("female", "male")), "rate": _choice(rng, ("slow", "normal", "fast"))}
        for text in _distinct(rng, speech_labels, EXTRA_WORDINGS["language"]):
            rows.append({"prompt": text, "domain": "speech", "label": code})
    tempo_words = {band: {w.lower() for w in words} for band, words in table()["music"]["tempo"].items()}
    for low, high, band in tempo_bands():
        def tempo_labels(low: float = low, high: float = high) -> dict[str, Any]:
            labels = _music_labels(music, _choice(rng, music.INSTRUMENTS), rng)
            # 5 bpm inside the band's edges: a prompt at a boundary asks for neither band
            labels["tempo_bpm"] = float(rng.integers(int(max(low, 40)) + 5, int(min(high, 220)) - 5))
            return labels
        # only wordings that say the tempo (a word of the band or the bpm): a caption about key and mood
        # alone asks nothing of the tempo
        for text in _distinct(rng, tempo_labels, TEMPO_PROMPTS_PER_BAND,
                              keep=lambda t, band=band: "bpm" in t or any(w in t.lower() for w in tempo_words[band])):
            rows.append({"prompt": text, "domain": "music", "family": "tempo", "label": band})
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < MIXTURE_PROMPTS:
        a, b = (str(c) for c in rng.choice(sfx.SFX_CLASSES, size=2, replace=False))
        if (a, b) in pairs or (b, a) in pairs:
            continue
        pairs.add((a, b))
        labels = {"domain": "sfx", "classes": [a, b], "intensity": _choice(rng, ("light", "moderate", "heavy")),
                  "pitch": _choice(rng, ("low", "medium", "high")), "distance": _choice(rng, ("near", "far"))}
        rows.append({"prompt": caption(labels, rng, style="heldout"), "domain": "sfx", "family": "mixture",
                     "labels": {"domain": "sfx", "classes": [a, b]}})
    return rows


def _music_labels(music: Any, instrument: str, rng: np.random.Generator) -> dict[str, Any]:
    style, bpm, meter = _music_setting(music, instrument, rng)
    return {"domain": "music", "instruments": [instrument], "style": style, "tempo_bpm": bpm,
            "key": _choice(rng, music.KEYS), "mode": _choice(rng, ("major", "minor")), "time_signature": meter,
            "loudness": _choice(rng, ("soft", "medium", "loud"))}


def _distinct(rng: np.random.Generator, make_labels: Any, n: int, keep: Any = None) -> list[str]:
    """`n` different held-out captions of labels drawn by `make_labels()` (each passing `keep`)."""
    out: list[str] = []
    for _ in range(200 * n):
        text = caption(make_labels(), rng, style="heldout")
        if text not in out and (keep is None or keep(text)):
            out.append(text)
            if len(out) == n:
                return out
    raise RuntimeError(f"could not word {n} different prompts")  # the caption tables are too small


def corpus_test_prompts(corpus: Path, rng: np.random.Generator, n: int = NUM_TEST_PROMPTS) -> list[dict[str, Any]]:
    """`n` test-split clips of `corpus` (sampled with `rng`, listed by index) with their captions."""
    meta = corpus / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"no metadata.jsonl in the corpus folder {corpus} "
                                f"(build it with `soundsmith data synth --out {corpus} --hours 4 --seed 0`)")
    spec = read_spec(corpus)
    differs = {k: getattr(spec, k) for k, v in STANDARD_CORPUS.items() if getattr(spec, k) != v}
    if differs:
        log.warning("%s is not the standard corpus (%s); the prompt set will not match the committed one",
                    corpus, ", ".join(f"{k}={v}" for k, v in differs.items()))
    with open(meta, encoding="utf-8") as f:
        test = [row for row in map(json.loads, f) if row["split"] == "test"]
    if len(test) < n:
        raise ValueError(f"{meta} has {len(test)} test-split clips; {n} are needed (synthesize a larger corpus)")
    picked = sorted(rng.choice(len(test), size=n, replace=False).tolist(), key=lambda k: test[k]["index"])
    return [{"prompt": test[k]["caption"], "file_name": test[k]["file_name"], "domain": test[k]["domain"],
             "index": test[k]["index"],
             "labels": {key: v for key, v in test[k]["labels"].items() if key not in _DROPPED_LABELS}}
            for k in picked]


def _music_setting(music: Any, instrument: str, rng: np.random.Generator) -> tuple[str, float, str]:
    """A style that uses `instrument`, with a tempo and meter that style is rendered at (music.STYLE_SPECS)."""
    specs = getattr(music, "STYLE_SPECS", {})

    def plays(style: str) -> bool:
        spec = specs[style]
        return spec.drums >= 0.5 if instrument == "drums" else instrument in (*spec.harmony, *spec.melody, *spec.bass)

    styles = [s for s in music.STYLES if s in specs and plays(s)] or list(music.STYLES)
    style = _choice(rng, styles)
    if style not in specs:
        return style, float(rng.integers(70, 141)), "3/4" if style == "waltz" else "4/4"
    low, high = specs[style].tempo
    return style, float(rng.integers(low, high + 1)), f"{_choice(rng, specs[style].meters)}/4"


def _choice(rng: np.random.Generator, options: tuple | list) -> str:
    return str(options[int(rng.integers(len(options)))])


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
