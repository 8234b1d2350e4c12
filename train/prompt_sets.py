"""The standard prompt sets committed under benchmarks/prompts/.

- adherence.jsonl: 2 prompts per SFX class, 1 per instrument, 1 per language, each
  {"prompt", "domain", "label"}, worded by the held-out caption style (wordings training never
  sees). Built from the renderers' vocabularies and a seed alone; the corpus is not read.
- adherence-tune.jsonl: the same families drawn again with another seed (no prompt shared with
  adherence.jsonl), for choosing settings — guidance, sampler steps, token sampling — without tuning on the
  prompts the figures are reported on.
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
from soundsmith.core.captions import caption
from soundsmith.core.files import write_text_atomic
from soundsmith.train.synth import read_spec

log = logging.getLogger(__name__)

NUM_TEST_PROMPTS = 200
SFX_PROMPTS_PER_CLASS = 2
STANDARD_CORPUS = {"num_clips": 2880, "seed": 0, "clip_seconds": 5.0, "sample_rate": 16000,
                   "domains": ("music", "sfx", "speech"), "caption_style": "train"}
_DROPPED_LABELS = ("beats", "downbeats")


def write_prompt_sets(corpus: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write adherence.jsonl, adherence-tune.jsonl and corpus-test-200.jsonl into `out` (created if missing);
    return their paths.

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
        style, bpm, meter = _music_setting(music, instrument, rng)
        labels = {"domain": "music", "instruments": [instrument], "style": style, "tempo_bpm": bpm,
                  "key": _choice(rng, music.KEYS), "mode": _choice(rng, ("major", "minor")), "time_signature": meter,
                  "loudness": _choice(rng, ("soft", "medium", "loud"))}
        rows.append({"prompt": caption(labels, rng, style="heldout"), "domain": "music", "label": instrument})
    for code, name in speech.LANGUAGES.items():
        labels = {"domain": "speech", "language": code, "language_name": name,
                  "voice": _choice(rng, ("female", "male")), "rate": _choice(rng, ("slow", "normal", "fast"))}
        rows.append({"prompt": caption(labels, rng, style="heldout"), "domain": "speech", "label": code})
    return rows


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
