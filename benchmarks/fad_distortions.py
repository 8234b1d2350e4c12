"""FAD sanity study on corpus audio: the distortion experiment of the FAD paper (Kilgour et al. 2019).

A corpus split is shuffled and cut into two disjoint halves. Half A is the clean reference; half B is
scored against it clean (the noise floor: two samples of one distribution, FAD near zero) and under
graded distortions, each of which must raise FAD monotonically with its strength:

- white noise at SNR 40, 30, 20, 10, 0 dB (relative to each clip's RMS);
- low-pass filtering (8th-order Butterworth, zero phase) at 6000, 4000, 2000, 1000, 500 Hz;
- clicks: 1, 4, 16, 64 per second, single-sample impulses of amplitude 0.5 and random sign.

    .venv/bin/python benchmarks/fad_distortions.py [--data data/corpus] [--split train] [--num-clips 600]
        [--embedding clap] [--checkpoint PATH] [--covariance full] [--seed 0] [--threads 1]

Prints the table (FAD and FAD / noise floor), whether each family rises monotonically, and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SNR_DB = (40, 30, 20, 10, 0)
LOWPASS_HZ = (6000, 4000, 2000, 1000, 500)
CLICKS_PER_S = (1, 4, 16, 64)


def white_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    rms = float(np.sqrt(np.mean(wave ** 2))) or 1e-4
    return wave + rng.standard_normal(wave.shape).astype(np.float32) * rms * 10 ** (-snr_db / 20)


def low_pass(wave: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(8, cutoff_hz, btype="low", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, wave, axis=-1).astype(np.float32)


def clicks(wave: np.ndarray, per_second: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    out = wave.copy()
    n = max(1, int(round(per_second * wave.shape[-1] / sample_rate)))
    where = rng.integers(0, wave.shape[-1], size=n)
    out[..., where] += 0.5 * rng.choice([-1.0, 1.0], size=n).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "corpus"), help="corpus folder (metadata.jsonl)")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.add_argument("--num-clips", type=int, default=600, help="clips in the two halves together (default 600)")
    p.add_argument("--embedding", default="clap", help="embedder name (eval/embedders.py; default clap)")
    p.add_argument("--checkpoint", default=None, help="embedder checkpoint (default: its shipped one)")
    p.add_argument("--covariance", default="full", choices=("full", "diagonal", "shrinkage"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    from soundsmith.codecs.audio import read_audio
    from soundsmith.eval.codec_report import read_split
    from soundsmith.eval.embedders import get_embedder
    from soundsmith.eval.fad import Statistics, fad

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows = read_split(args.data, args.split, args.num_clips)
    order = np.random.default_rng(args.seed).permutation(len(rows))
    half_a, half_b = [rows[i] for i in order[: len(rows) // 2]], [rows[i] for i in order[len(rows) // 2:]]
    embedder = get_embedder(args.embedding, checkpoint=args.checkpoint)
    waves_b = [read_audio(Path(args.data) / r["file_name"]) for r in half_b]

    def stats(waves: list[tuple[np.ndarray, int]], what: str) -> Statistics:
        windows = np.concatenate([embedder.embed(w, sr) for w, sr in waves])
        return Statistics.from_embeddings(windows, covariance=args.covariance, what=what)

    reference = stats([read_audio(Path(args.data) / r["file_name"]) for r in half_a], "half A (reference)")
    floor = fad(stats(waves_b, "half B"), reference)
    results: list[dict] = [{"family": "clean", "level": "half B vs half A", "fad": floor}]

    families = {
        "white noise (SNR dB)": [(snr, lambda w, sr, rng, s=snr: white_noise(w, s, rng)) for snr in SNR_DB],
        "low-pass (cutoff Hz)": [(hz, lambda w, sr, rng, c=hz: low_pass(w, min(c, 0.45 * sr), sr)) for hz in LOWPASS_HZ],
        "clicks (per second)": [(n, lambda w, sr, rng, k=n: clicks(w, k, sr, rng)) for n in CLICKS_PER_S],
    }
    monotonic = {}
    for family, levels in families.items():
        values = []
        for level, distort in levels:
            rng = np.random.default_rng([args.seed, len(results)])
            distorted = [(distort(w, sr, rng), sr) for w, sr in waves_b]
            value = fad(stats(distorted, f"half B, {family} {level}"), reference)
            values.append(value)
            results.append({"family": family, "level": level, "fad": value})
            print(f"  {family:<22}{level:>8}  FAD {value:10.4f}", file=sys.stderr, flush=True)
        monotonic[family] = all(b > a for a, b in zip(values, values[1:])) and values[0] > floor

    info = embedder.describe()
    print(f"FAD distortion study: {args.data} split {args.split}, halves of {len(half_a)} / {len(half_b)} clips "
          f"({reference.n} reference windows), embedding {info['name']} ({info['dim']}-d, {info['window_s']} s windows), "
          f"{args.covariance} covariance, {args.threads} thread(s)")
    print(f"{'distortion':<24}{'level':>18}{'FAD':>12}{'/ floor':>10}")
    for r in results:
        ratio = r["fad"] / floor if floor > 0 else float("inf")
        print(f"{r['family']:<24}{r['level']!s:>18}{r['fad']:>12.4f}{ratio:>10.1f}")
    print(f"noise floor (two disjoint halves of the {args.split} split): FAD {floor:.4f}")
    for family, ok in monotonic.items():
        print(f"{family:<24} rises monotonically with strength (and above the floor): {'yes' if ok else 'NO'}")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({"embedding": info["name"], "split": args.split, "clips": [len(half_a), len(half_b)],
                      "covariance": args.covariance, "noise_floor": floor, "monotonic": monotonic,
                      "results": results}))
    return 0 if all(monotonic.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
