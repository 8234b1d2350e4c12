"""Does a model play at the tempo a prompt asks for? Measured by a beat tracker that is not ours.

    .venv/bin/python benchmarks/tempo_control.py --model ldm=models/default-ldm [--model old=DIR ...]
        [--seeds 2] [--threads 2] [--real data/corpus] [--out runs/tempo-control.json]

Prompts: 8 music descriptions that name no tempo (below), each asked
- at 60, 85, 115 and 150 BPM as a figure ("a piano melody at 115 BPM"), and
- in words: "..., played slowly" and "..., played fast".
`--seeds` clips each (clip k of prompt i: seed i * seeds + k), 5 s.

The tempo of each clip is librosa's estimate (`librosa.feature.tempo` on the onset-strength envelope, hop
10 ms, a flat prior over 40-240 BPM), so the figure does not lean on our CLAP or our label classifiers. Per
model: the median measured tempo per asked tempo; Spearman's rho between asked and measured; the share
within 10 % of the asked tempo, and within 10 % of it, its half or its double (beat trackers often count
half or double time); for the word prompts, the median tempo of "slowly" and of "fast" clips and the share
of (description, seed) pairs where the fast clip measures faster. `--real DIR` first measures the same
estimator on the real music clips of a corpus's test split against their labelled tempo: the ceiling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTIONS = ("a piano melody", "a drum groove", "strummed acoustic guitar", "a jazz tune on saxophone",
                "a synth arpeggio", "a string ensemble", "a marimba pattern", "an electric bass line")
ASKED = (60, 85, 115, 150)
WORDS = {"slow": "{}, played slowly", "fast": "{}, played fast"}
HOP_S = 0.01


def estimate_bpm(wave: np.ndarray, sample_rate: int) -> float:
    """librosa's global tempo of a mono clip, with a flat prior over 40-240 BPM."""
    import librosa
    import scipy.stats

    hop = int(round(HOP_S * sample_rate))
    envelope = librosa.onset.onset_strength(y=wave.astype(np.float32), sr=sample_rate, hop_length=hop)
    tempo = librosa.feature.tempo(onset_envelope=envelope, sr=sample_rate, hop_length=hop,
                                  prior=scipy.stats.uniform(40, 200))
    return float(np.atleast_1d(tempo)[0])


def within(measured: float, asked: float, tolerance: float = 0.10, octaves: bool = False) -> bool:
    targets = (asked, asked / 2, asked * 2) if octaves else (asked,)
    return any(abs(measured - t) <= tolerance * t for t in targets)


def summarize(asked: list[float], measured: list[float]) -> dict:
    from scipy.stats import spearmanr

    per = {}
    for bpm in sorted(set(asked)):
        got = [m for a, m in zip(asked, measured) if a == bpm]
        per[str(int(bpm))] = round(statistics.median(got), 1)
    return {"median_by_asked": per, "spearman_rho": round(float(spearmanr(asked, measured)[0]), 3),
            "within_10pct": round(float(np.mean([within(m, a) for a, m in zip(asked, measured)])), 3),
            "within_10pct_or_octave": round(float(np.mean([within(m, a, octaves=True)
                                                           for a, m in zip(asked, measured)])), 3),
            "clips": len(asked)}


def real_ceiling(data: Path) -> dict:
    """The estimator on the corpus's real test-split music clips against their labelled tempo."""
    from soundsmith.codecs.audio import read_audio

    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    music = [r for r in rows if r.get("domain") == "music" and r.get("split") == "test"]
    asked, measured = [], []
    for r in music:
        wave, sr = read_audio(data / r["file_name"], sample_rate=16000, channels=1)
        asked.append(float(r["labels"]["tempo_bpm"]))
        measured.append(estimate_bpm(wave[0], sr))
    out = summarize(asked, measured)
    out.pop("median_by_asked")  # labelled tempi are continuous
    return out


def run_model(path: str, seeds: int) -> dict:
    from soundsmith.pipelines import load_pipeline

    pipe = load_pipeline(path)
    pipe.progress_bar = False
    prompts, kinds = [], []
    for description in DESCRIPTIONS:
        for bpm in ASKED:
            prompts.append(f"{description} at {bpm} BPM")
            kinds.append(("figure", description, float(bpm)))
        for word, template in WORDS.items():
            prompts.append(template.format(description))
            kinds.append(("word", description, word))
    measured, read = [], []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        out = pipe([prompt] * seeds, duration_s=5.0, seed=[i * seeds + k for k in range(seeds)])
        read.append((out.parameters.get("tempo_bpm") or [None])[0])
        measured.append([estimate_bpm(out.audios[k, 0].numpy(), out.sample_rate) for k in range(seeds)])
    figure = [(kind[2], m) for kind, ms in zip(kinds, measured) if kind[0] == "figure" for m in ms]
    result = summarize([a for a, _ in figure], [m for _, m in figure])
    words = {w: [m for kind, ms in zip(kinds, measured) if kind[0] == "word" and kind[2] == w for m in ms]
             for w in WORDS}
    pairs = list(zip(words["slow"], words["fast"]))  # same description and seed, in order
    result["words"] = {"median_slow": round(statistics.median(words["slow"]), 1),
                       "median_fast": round(statistics.median(words["fast"]), 1),
                       "fast_faster_share": round(float(np.mean([f > s for s, f in pairs])), 3)}
    result["tempo_read"] = {p: r for p, r in zip(prompts, read) if r is not None} or None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model folder (repeatable)")
    p.add_argument("--seeds", type=int, default=2, help="clips per prompt (default 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--real", type=Path, default=None, help="corpus folder: measure the estimator on its test music")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = {}
    if args.real is not None:
        report["real"] = real_ceiling(args.real)
        r = report["real"]
        print(f"real clips ({r['clips']}): rho {r['spearman_rho']}, within 10 % {r['within_10pct']:.0%}, "
              f"or at half/double time {r['within_10pct_or_octave']:.0%}")
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            name, path = Path(spec).name, spec
        report[name] = res = run_model(path, args.seeds)
        by = ", ".join(f"{a} -> {m}" for a, m in res["median_by_asked"].items())
        w = res["words"]
        print(f"{name}: asked -> median measured BPM: {by}; rho {res['spearman_rho']}; within 10 % "
              f"{res['within_10pct']:.0%}, or at half/double time {res['within_10pct_or_octave']:.0%} "
              f"({res['clips']} clips, {res['seconds']:.0f} s)")
        print(f"{name}: 'played slowly' median {w['median_slow']} BPM, 'played fast' {w['median_fast']} BPM; "
              f"the fast clip faster in {w['fast_faster_share']:.0%} of pairs")
    print(json.dumps(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
