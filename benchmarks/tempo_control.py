"""Does a model play at the tempo a prompt asks for? Measured by a beat tracker that is not ours.

    .venv/bin/python benchmarks/tempo_control.py --model ldm=models/default-ldm [--model old=DIR ...]
        [--seeds 2] [--threads 2] [--real data/corpus] [--out runs/tempo-control.json]

Prompts: 8 music descriptions that name no tempo (below), each asked
- at 60, 85, 115 and 150 BPM as a figure ("a piano melody at 115 BPM"), and
- in words: "..., played slowly" and "..., played fast".
`--seeds` clips each (clip k of prompt i: seed i * seeds + k), 5 s.

Two measures that do not lean on our CLAP or our label classifiers, both from librosa:
- tempo: `librosa.feature.tempo` on the onset-strength envelope (hop 10 ms, a flat prior over 40-240 BPM):
  the median per asked tempo, Spearman's rho between asked and measured, the share within 10 % of the asked
  tempo, and within 10 % of it, its half or its double (beat trackers often count half or double time);
- onset rate: `librosa.onset.onset_detect` onsets per second, median per asked tempo, and the ratio of the
  150 BPM clips' rate to the 60 BPM clips' (real music at those tempi: about 2.5), which follows a tempo
  request even where the beat is too irregular for a tempo estimate;
for the word prompts, the median tempo and onset rate of "slowly" and of "fast" clips and the share of
(description, seed) pairs where the fast clip has more onsets. `--real DIR` first measures both on the real
music clips of a corpus's test split against their labelled tempo (Spearman's rho): what the measures can
see. `--tempo-scale S` sets a tempo-conditioned model's tempo scale (default: its own). `--clap-probe DIR` also
measures how much tempo a CLAP embedding carries: a logistic probe of the tempo band, fitted on the train split's
music and scored on the test split's, from the CLAP audio embedding of each clip and from the text embedding
of one caption drawn from its labels; and the cosine of one caption with each tempo word.
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


def onset_rate(wave: np.ndarray, sample_rate: int) -> float:
    """Onsets per second (librosa's onset detector, hop 10 ms)."""
    import librosa

    hop = int(round(HOP_S * sample_rate))
    onsets = librosa.onset.onset_detect(y=wave.astype(np.float32), sr=sample_rate, hop_length=hop)
    return len(onsets) / (len(wave) / sample_rate)


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


def music_records(data: Path, split: str) -> list:
    """The music clips of one split of a corpus (the suite's own metadata reader)."""
    from soundsmith.train.datasets import read_records, select_split

    _, records = read_records(data)
    return [r for r in select_split(records, split, data) if r.domain == "music"]


def real_ceiling(data: Path) -> dict:
    """The estimator on the corpus's real test-split music clips against their labelled tempo."""
    from soundsmith.codecs.audio import read_audio

    music = music_records(data, "test")
    from scipy.stats import spearmanr

    asked, measured, rates = [], [], []
    for r in music:
        wave, sr = read_audio(r.path, sample_rate=16000, channels=1)
        asked.append(float(r.labels["tempo_bpm"]))
        measured.append(estimate_bpm(wave[0], sr))
        rates.append(onset_rate(wave[0], sr))
    out = summarize(asked, measured)
    out.pop("median_by_asked")  # labelled tempi are continuous
    out["onset_rate_rho"] = round(float(spearmanr(asked, rates)[0]), 3)
    return out


def clap_probe(data: Path, clap_dir: Path) -> dict:
    """Tempo band from CLAP embeddings (see the module docstring)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from soundsmith.codecs.audio import read_audio
    from soundsmith.core.captions import caption
    from soundsmith.gen.conditioners import ClapConditioner
    from soundsmith.gen.tempo import tempo_band

    conditioner = ClapConditioner.from_pretrained(clap_dir)
    rng = np.random.default_rng(0)
    feats, bands = {}, {}
    for split in ("train", "test"):
        music = music_records(data, split)
        waves = [torch.from_numpy(read_audio(r.path, sample_rate=16000, channels=1)[0]) for r in music]
        n = min(w.shape[-1] for w in waves)
        with torch.no_grad():
            audio = conditioner.model.embed_audio(torch.stack([w[:, :n] for w in waves]), 16000).numpy()
            text = conditioner.embed_prompts([caption(r.labels, rng) for r in music]).numpy()
        feats[split] = {"audio": audio, "text": text}
        bands[split] = np.array([tempo_band(float(r.labels["tempo_bpm"])) for r in music])
    out = {"test_clips": len(bands["test"]),
           "largest_band_share": round(float(max(np.mean(bands["test"] == b) for b in set(bands["test"]))), 3)}
    for kind in ("audio", "text"):
        probe = LogisticRegression(max_iter=2000).fit(feats["train"][kind], bands["train"])
        out[f"{kind}_probe_accuracy"] = round(float(probe.score(feats["test"][kind], bands["test"])), 3)
    words = conditioner.embed_prompts([f"a {w} waltz played on piano" for w in ("slow", "moderate", "fast")]).numpy()
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    out["cosine_slow_fast"] = round(float(words[0] @ words[2]), 3)
    out["cosine_slow_moderate"] = round(float(words[0] @ words[1]), 3)
    return out


def run_model(path: str, seeds: int, tempo_scale: float | None = None) -> dict:
    from soundsmith.pipelines import load_pipeline

    pipe = load_pipeline(path)
    extra = {} if tempo_scale is None else {"tempo_scale": tempo_scale}
    pipe.progress_bar = False
    prompts, kinds = [], []
    for description in DESCRIPTIONS:
        for bpm in ASKED:
            prompts.append(f"{description} at {bpm} BPM")
            kinds.append(("figure", description, float(bpm)))
        for word, template in WORDS.items():
            prompts.append(template.format(description))
            kinds.append(("word", description, word))
    measured, rates, read = [], [], []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        out = pipe([prompt] * seeds, duration_s=5.0, seed=[i * seeds + k for k in range(seeds)], **extra)
        read.append((out.parameters.get("tempo_bpm") or [None])[0])
        measured.append([estimate_bpm(out.audios[k, 0].numpy(), out.sample_rate) for k in range(seeds)])
        rates.append([onset_rate(out.audios[k, 0].numpy(), out.sample_rate) for k in range(seeds)])
    figure = [(kind[2], m) for kind, ms in zip(kinds, measured) if kind[0] == "figure" for m in ms]
    result = summarize([a for a, _ in figure], [m for _, m in figure])
    by_rate = {}
    for bpm in ASKED:
        by_rate[str(bpm)] = round(statistics.median(
            [r for kind, rs in zip(kinds, rates) if kind[0] == "figure" and kind[2] == bpm for r in rs]), 2)
    result["onset_rate_by_asked"] = by_rate
    result["onset_rate_ratio_150_60"] = round(by_rate[str(ASKED[-1])] / max(by_rate[str(ASKED[0])], 1e-9), 2)

    def of_word(values: list, word: str) -> list[float]:
        return [v for kind, vs in zip(kinds, values) if kind[0] == "word" and kind[2] == word for v in vs]

    pairs = list(zip(of_word(rates, "slow"), of_word(rates, "fast")))  # same description and seed, in order
    result["words"] = {"median_slow": round(statistics.median(of_word(measured, "slow")), 1),
                       "median_fast": round(statistics.median(of_word(measured, "fast")), 1),
                       "onset_rate_slow": round(statistics.median(of_word(rates, "slow")), 2),
                       "onset_rate_fast": round(statistics.median(of_word(rates, "fast")), 2),
                       "fast_more_onsets_share": round(float(np.mean([f > s for s, f in pairs])), 3)}
    result["tempo_read"] = {p: r for p, r in zip(prompts, read) if r is not None} or None
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model folder (repeatable)")
    p.add_argument("--seeds", type=int, default=2, help="clips per prompt (default 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--real", type=Path, default=None, help="corpus folder: measure the estimator on its test music")
    p.add_argument("--clap-probe", type=Path, default=None, metavar="DATA",
                   help="corpus folder: how much tempo models/clap's embeddings carry (see above)")
    p.add_argument("--tempo-scale", type=float, default=None, help="a tempo-conditioned model's tempo scale "
                   "(default: its config's); applies to every --model, so give tempo-conditioned ones only")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = {}
    if args.real is not None:
        report["real"] = real_ceiling(args.real)
        r = report["real"]
        print(f"real clips ({r['clips']}): tempo rho {r['spearman_rho']}, within 10 % {r['within_10pct']:.0%}, "
              f"or at half/double time {r['within_10pct_or_octave']:.0%}; onset rate rho {r['onset_rate_rho']}")
    if args.clap_probe is not None:
        report["clap_probe"] = c = clap_probe(args.clap_probe, ROOT / "models" / "clap")
        print(f"CLAP tempo probe ({c['test_clips']} test music clips, largest band {c['largest_band_share']:.0%}): "
              f"audio embedding {c['audio_probe_accuracy']:.0%}, caption embedding {c['text_probe_accuracy']:.0%}; "
              f"cosine of 'slow' / 'fast' captions {c['cosine_slow_fast']}")
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            name, path = Path(spec).name, spec
        report[name] = res = run_model(path, args.seeds, args.tempo_scale)
        by = ", ".join(f"{a} -> {m}" for a, m in res["median_by_asked"].items())
        w = res["words"]
        print(f"{name}: asked -> median measured BPM: {by}; rho {res['spearman_rho']}; within 10 % "
              f"{res['within_10pct']:.0%}, or at half/double time {res['within_10pct_or_octave']:.0%} "
              f"({res['clips']} clips, {res['seconds']:.0f} s)")
        rates = ", ".join(f"{a} -> {m}" for a, m in res["onset_rate_by_asked"].items())
        print(f"{name}: asked -> median onsets per second: {rates}; 150 / 60 BPM ratio "
              f"{res['onset_rate_ratio_150_60']}")
        print(f"{name}: 'played slowly' {w['median_slow']} BPM / {w['onset_rate_slow']} onsets/s, 'played fast' "
              f"{w['median_fast']} BPM / {w['onset_rate_fast']} onsets/s; the fast clip has more onsets in "
              f"{w['fast_more_onsets_share']:.0%} of pairs")
    print(json.dumps(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
