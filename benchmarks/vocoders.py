"""Every registered vocoder on fresh corpus clips, fed the real log-mel and the mel VAE's round trip.

    .venv/bin/python benchmarks/vocoders.py --data data/fresh [--per-domain 100] [--vocoders griffin-lim ...]
        [--threads 1 2] [--limit N] [--out runs/vocoders.json] [--grid runs/vocoders-grid]

Use a corpus of a seed no model was trained on (`soundsmith data synth --out data/fresh --num-clips 360
--seed 2026 --caption-style heldout`); every split of it is used. Per vocoder (and variant: Griffin-Lim
at 32 and 64 iterations), per input (`real`: the log-mel of the clip; `vae`: that mel through the mel
VAE's encode/decode, the latent-diffusion path) and per domain, with the maths in eval/vocoder_metrics.py:

- re-analysis mel L1: log-mel of the output against the mel that went in (natural log), and, for the
  VAE input, against the clip's real mel (end to end);
- MR-STFT and SI-SDR (dB) against the original wave;
- pitch error (cents RMSE over frames voiced in both) and periodicity error (RMSE), CREPE tracks of the
  output against the original's (eval/crepe.py; "tiny" CREPE by default, 10 ms hop; speech 50-550 Hz as in
  Vocos' evaluation, music 50-1500 Hz), on music and speech; voiced/unvoiced F1; wide-band PESQ on speech;
- label accuracy kept: the label classifier (models/labels; also models/labels-features where it exists)
  on decoded clips over the same classifier on the originals, per family (domain, sfx_class, instrument,
  language) and pooled per domain;
- comb: narrow lines (> 6 dB, < 3 bins) of the output's long-term spectrum over the input's that are also
  peaks of the output's own spectrum, counted on the mean over a domain's clips of the per-clip spectra in
  dB (a fixed comb adds up, clip detail averages out), and the mean count per clip;
- seconds per 5 s of audio at 1 and 2 threads, after a warm-up (best of 5, the median is in the JSON; the
  VAE input row includes the VAE decode), on whatever else this machine is running at the time (its load
  average is recorded; `--timing-only` re-times when the machine is quieter).

Prints markdown tables and writes every figure (and each clip's) as JSON with `--out`. Quality figures run
on one thread (set OMP_NUM_THREADS=1 for the whole run; `--threads` only sets the timing).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundsmith.codecs.vocoders import VOCODERS  # noqa: E402
from soundsmith.core.files import write_json  # noqa: E402

log = logging.getLogger("vocoders")

# registry name -> the variants benchmarked: (row name, spec params)
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "griffin-lim": [("griffin-lim-32", {"n_iter": 32}), ("griffin-lim-64", {"n_iter": 64})],
    "hifigan-universal": [("hifigan-universal", {})],
    "hifigan": [("hifigan-v1", {"path": "vocoder"})],
}
DOMAINS = ("music", "sfx", "speech")
LABEL_FAMILIES = ("domain", "sfx_class", "instrument", "language")
PITCH_RANGES = {"speech": (50.0, 550.0), "music": (50.0, 1500.0), "sfx": (50.0, 1500.0)}  # Hz; see eval/crepe.py
INPUTS = ("real", "vae")


# ---------------------------------------------------------------------------------------------- data


def select_rows(data: Path, per_domain: int, limit: int | None) -> list[dict[str, Any]]:
    """The first `per_domain` clips of each domain (all splits, file order); `limit` caps the total, taken
    round-robin across domains."""
    meta = data / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"no metadata.jsonl in {data} (make one with `soundsmith data synth`)")
    by_domain: dict[str, list[dict]] = {}
    for line in meta.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_domain.setdefault(str(row.get("domain")), []).append(row)
    queues = [by_domain.get(d, [])[:per_domain] for d in DOMAINS]
    rows: list[dict] = []
    while any(queues) and (limit is None or len(rows) < limit):
        for q in queues:
            if q and (limit is None or len(rows) < limit):
                rows.append(q.pop(0))
    if not rows:
        raise ValueError(f"{meta}: no clips of the domains {', '.join(DOMAINS)}")
    return rows


def label_truth(labels: dict[str, Any]) -> dict[str, list[str]]:
    from soundsmith.eval.labels import corpus_targets

    return {f: v for f, v in corpus_targets(labels).items() if f in LABEL_FAMILIES}


# ------------------------------------------------------------------------------------------- models


def build_variants(names: Iterable[str], codec_dir: Path, adapter: str | None) -> tuple[dict[str, Any], list[str]]:
    """Row name -> `MelLatentCodec` sharing one VAE, each with its vocoder; and the rows skipped (why)."""
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.vocoders import build_vocoder

    base = MelLatentCodec.from_pretrained(codec_dir)
    codecs, skipped = {}, []
    for name in names:
        for row, params in VARIANTS.get(name, [(name, {})]):
            spec = {"name": name, **params}
            if name == "hifigan-universal" and adapter:
                spec["adapter"] = adapter
            try:
                vocoder = build_vocoder(spec, mel=base.mel.cfg, base_dir=codec_dir)
            except (FileNotFoundError, ModuleNotFoundError) as err:
                skipped.append(f"{row}: {err}")
                continue
            codecs[row] = base.with_vocoder(vocoder.eval()).eval()
    return codecs, skipped


def load_classifiers(labels: Path, feature_labels: Path) -> dict[str, Any]:
    from soundsmith.eval.labels import LabelClassifier

    out = {"labels": LabelClassifier.from_pretrained(labels)}
    if (feature_labels / "config.json").is_file():
        try:
            from soundsmith.eval.feature_labels import load_feature_label_classifier

            out["labels-features"] = load_feature_label_classifier(feature_labels)
        except (ImportError, ValueError, FileNotFoundError) as err:
            log.warning("second label classifier %s not loaded: %s", feature_labels, err)
    return out


# ------------------------------------------------------------------------------------------- timing


@torch.no_grad()
def seconds_per_call(fn: Any, repeats: int = 5) -> dict[str, float]:
    """{"best", "median"} seconds of `repeats` calls after a warm-up call (lazy initialisation, allocator
    growth). The best is what the table shows: on this shared machine the other calls measure the neighbours."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best": min(times), "median": statistics.median(times)}


def time_variants(codecs: dict[str, Any], threads: list[int], seconds: float = 5.0, repeats: int = 5
                  ) -> dict[str, Any]:
    """Seconds per `seconds` of audio: {row: {"real": {threads: s}, "vae": {...}}}, plus the VAE decode alone."""
    any_codec = next(iter(codecs.values()))
    frames = int(seconds * any_codec.sample_rate / any_codec.hop_length)
    torch.manual_seed(0)
    mel = any_codec.wave_to_mel(0.1 * torch.randn(1, 1, int(seconds * any_codec.sample_rate)), any_codec.sample_rate)
    latent = any_codec.vae.encode(mel).mean
    assert mel.shape[-1] == frames
    before = torch.get_num_threads()
    out: dict[str, Any] = {"load_average": list(os.getloadavg()), "vae_decode": {}}
    try:
        for n in threads:
            torch.set_num_threads(n)
            out["vae_decode"][n] = seconds_per_call(lambda: any_codec.vae.decode(latent), repeats)
            for row, codec in codecs.items():
                out.setdefault(row, {"real": {}, "vae": {}, "threads_set": {}})
                out[row]["real"][n] = seconds_per_call(lambda c=codec: c.mel_to_wave(mel), repeats)
                out[row]["vae"][n] = seconds_per_call(lambda c=codec: c.mel_to_wave(c.vae.decode(latent)), repeats)
                out[row]["threads_set"][n] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    out["load_average_after"] = list(os.getloadavg())
    return out


# ------------------------------------------------------------------------------------------ quality


class Accumulator:
    """Per (row, input, domain): lists of per-clip figures, pitch sums, spectrum ratios, label features."""

    def __init__(self) -> None:
        self.values: dict[tuple, dict[str, list[float]]] = {}
        self.pitch: dict[tuple, Any] = {}
        self.ratios: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}  # (ratio dB, output dB) per clip
        self.features: dict[tuple, dict[str, list[np.ndarray]]] = {}
        self.truth: dict[tuple, list[dict]] = {}

    def add(self, key: tuple, **figures: float) -> None:
        slot = self.values.setdefault(key, {})
        for name, value in figures.items():
            slot.setdefault(name, []).append(float(value))


@torch.no_grad()
def evaluate(rows: list[dict], data: Path, codecs: dict[str, Any], classifiers: dict[str, Any], *,
             crepe_capacity: str, pitch_hop: int, pitch_domains: tuple[str, ...], grid_rows: set[int]
             ) -> tuple[Accumulator, list[dict], dict[int, dict[str, Any]]]:
    from soundsmith.codecs.audio import read_audio
    from soundsmith.eval import vocoder_metrics as vm
    from soundsmith.eval.crepe import load_crepe, track_pitch

    base = next(iter(codecs.values()))
    sr = base.sample_rate
    crepe_model = load_crepe(crepe_capacity)
    acc = Accumulator()
    per_clip: list[dict] = []
    grid: dict[int, dict[str, Any]] = {}
    t_start = time.perf_counter()
    for i, row in enumerate(rows):
        domain = str(row["domain"])
        wave, _ = read_audio(data / row["file_name"], sample_rate=sr, channels=1)  # [1, T]
        x = torch.from_numpy(wave)[None]  # [1, 1, T]
        length = x.shape[-1]
        ref = x[0, 0]  # [T]
        real_mel = base.wave_to_mel(x, sr)  # [1, F, S]
        mels = {"real": real_mel, "vae": base.vae.decode(base.vae.encode(real_mel).mean)}  # [1, F, S] each
        truth = label_truth(row["labels"])
        do_pitch = domain in pitch_domains
        fmin, fmax = PITCH_RANGES[domain]
        ref_track = track_pitch(crepe_model, ref, hop_length=pitch_hop, fmin=fmin, fmax=fmax) if do_pitch else None
        ref_ltas = vm.long_term_spectrum(ref)
        key0 = ("original", "-", domain)
        for name, clf in classifiers.items():
            acc.features.setdefault(key0, {}).setdefault(name, []).append(clf.features([wave], sr)[0])
        acc.truth.setdefault(key0, []).append(truth)
        clip = {"file": row["file_name"], "domain": domain, "rows": {}}
        if i in grid_rows:
            grid[i] = {"file": row["file_name"], "domain": domain, "original": ref.clone()}
        for name, codec in codecs.items():
            for path, mel in mels.items():
                key = (name, path, domain)
                out = codec.mel_to_wave(mel)[0, 0, :length]  # [T] at 16 kHz
                re_mel = base.mel(out[None])  # [1, F, S]
                figures = {
                    "mel_l1": vm.mel_l1(mel, re_mel), "mel_l1_vs_real": vm.mel_l1(real_mel, re_mel),
                    "mrstft": vm.multi_resolution_stft(ref, out), "si_sdr_db": vm.si_sdr(ref, out),
                    "rms_ratio_db": 20 * math.log10(float(out.pow(2).mean().sqrt()) /
                                                    max(float(ref.pow(2).mean().sqrt()), 1e-9) + 1e-9),
                }
                if domain == "speech":
                    figures["pesq_wb"] = vm.pesq_wb(ref, out, sr)
                acc.add(key, **figures)
                if do_pitch:
                    err = vm.pitch_errors(ref_track, track_pitch(crepe_model, out, hop_length=pitch_hop,
                                                                 fmin=fmin, fmax=fmax))
                    acc.pitch[key] = acc.pitch.get(key, vm.PitchErrors()) + err
                    figures.update({f"pitch_{k}": v for k, v in err.summary().items()})
                out_ltas = vm.long_term_spectrum(out)
                ratio, own = vm.spectrum_ratio_db(out_ltas, ref_ltas), vm.power_db(out_ltas)
                acc.ratios.setdefault(key, []).append((ratio, own))
                figures["comb_lines"] = len(vm.comb_peaks(ratio, own))
                for cname, clf in classifiers.items():
                    acc.features.setdefault(key, {}).setdefault(cname, []).append(clf.features([out[None]], sr)[0])
                acc.truth.setdefault(key, []).append(truth)
                clip["rows"][f"{name}/{path}"] = figures
                if i in grid_rows:
                    grid[i][f"{name}/{path}"] = out.clone()
        per_clip.append(clip)
        elapsed = time.perf_counter() - t_start
        print(f"[{i + 1}/{len(rows)}] {row['file_name']} {domain}: {elapsed:.0f} s, "
              f"~{elapsed / (i + 1) * (len(rows) - i - 1) / 60:.0f} min left", file=sys.stderr, flush=True)
    return acc, per_clip, grid


def summarise(acc: Accumulator, classifiers: dict[str, Any], hz_per_bin: float) -> dict[str, Any]:
    """{row: {input: {domain | "all": figures}}} and {"original": label accuracies}."""
    from soundsmith.eval import vocoder_metrics as vm
    from soundsmith.eval.metrics import label_accuracy

    def accuracies(key: tuple) -> dict[str, Any]:
        return {name: label_accuracy(clf.predict_features(np.stack(acc.features[key][name])), acc.truth[key])
                for name, clf in classifiers.items()}

    originals = {d: accuracies(("original", "-", d)) for d in DOMAINS if ("original", "-", d) in acc.truth}
    out: dict[str, Any] = {"original": {"labels": originals}}
    for key in acc.values:
        name, path, domain = key
        vals = acc.values[key]
        fig: dict[str, Any] = {"clips": len(vals["mel_l1"])}
        for metric, xs in vals.items():
            finite = [x for x in xs if math.isfinite(x)]
            fig[metric] = sum(finite) / len(finite) if finite else math.nan
            if metric == "pesq_wb":
                fig["pesq_clips"] = len(finite)
        if key in acc.pitch:
            fig.update({f"pitch_{k}": v for k, v in acc.pitch[key].summary().items()})
        pooled = np.mean(np.stack([np.stack(pair) for pair in acc.ratios[key]]), 0)  # [2, K]
        peaks = vm.comb_peaks(pooled[0], pooled[1])
        fig["comb_lines_pooled"] = len(peaks)
        fig["comb_lines_pooled_hz"] = [round(k * hz_per_bin, 1) for k in peaks]
        fig["comb_lines_per_clip"] = float(np.mean([len(vm.comb_peaks(r, o)) for r, o in acc.ratios[key]]))
        decoded = accuracies(key)
        fig["labels"] = {c: {"accuracy": decoded[c], "kept": vm.accuracy_kept(decoded[c], originals[domain][c])}
                         for c in classifiers}
        out.setdefault(name, {}).setdefault(path, {})[domain] = fig
    # all domains: clip-weighted means of the per-domain figures, summed comb counts
    for name, paths in out.items():
        if name == "original":
            continue
        for doms in paths.values():
            n = sum(d["clips"] for d in doms.values())
            allfig: dict[str, Any] = {"clips": n}
            for metric in ("mel_l1", "mel_l1_vs_real", "mrstft", "si_sdr_db", "rms_ratio_db"):
                allfig[metric] = sum(d[metric] * d["clips"] for d in doms.values()) / n
            allfig["comb_lines_pooled"] = sum(d["comb_lines_pooled"] for d in doms.values())
            doms["all"] = allfig
    return out


# ------------------------------------------------------------------------------------------- tables


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def pooled_kept(fig: dict[str, Any], classifier: str) -> float:
    """Pooled ("all" families) accuracy on decoded over pooled accuracy on the originals."""
    lab = fig.get("labels", {}).get(classifier)
    return lab["kept"].get("all", math.nan) if lab else math.nan


def tables(summary: dict[str, Any], timing: dict[str, Any] | None, threads: list[int], classifiers: list[str]
           ) -> str:
    lines = []
    rows = [(n, p) for n in summary if n != "original" for p in INPUTS if p in summary[n]]
    t_cols = [f"s/5 s @{t}" for t in threads] if timing else []
    head = (["vocoder", "mels", "mel L1", "mel L1 vs real", "MR-STFT", "SI-SDR dB", "pitch ¢ music", "pitch ¢ speech",
             "periodicity music", "periodicity speech", "PESQ speech"]
            + [f"{c} kept {d}" for c in classifiers for d in DOMAINS] + ["comb lines"] + t_cols)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, path in rows:
        doms = summary[name][path]
        a = doms["all"]
        get = lambda d, k, doms=doms: doms.get(d, {}).get(k, math.nan)  # noqa: E731
        cells = [name, path, fmt(a["mel_l1"]), fmt(a["mel_l1_vs_real"]), fmt(a["mrstft"]), fmt(a["si_sdr_db"], 2),
                 fmt(get("music", "pitch_pitch_cents_rmse"), 1), fmt(get("speech", "pitch_pitch_cents_rmse"), 1),
                 fmt(get("music", "pitch_periodicity_rmse")), fmt(get("speech", "pitch_periodicity_rmse")),
                 fmt(get("speech", "pesq_wb"), 2)]
        cells += [fmt(pooled_kept(doms.get(d, {}), c), 2) for c in classifiers for d in DOMAINS]
        cells += [str(a["comb_lines_pooled"])]
        if timing:
            cells += [fmt(timing.get(name, {}).get(path, {}).get(t, {}).get("best"), 3) for t in threads]
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "Per domain (n = clips; pitch/periodicity pooled over frames; comb = lines in the domain's "
              "mean spectrum ratio, and the mean count per clip):", ""]
    head = ["vocoder", "mels", "domain", "n", "mel L1", "vs real", "MR-STFT", "SI-SDR", "pitch ¢", "periodicity",
            "V/UV F1", "PESQ", "comb (pooled / per clip)"] + [
        f"{c} {f}" for c in classifiers for f in ("domain", "class", "all")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    family_of_domain = {"music": "instrument", "sfx": "sfx_class", "speech": "language"}

    def label_cells(lab: dict[str, Any] | None, domain: str) -> list[str]:
        if not lab:
            return ["–"] * 3
        out = []
        for fam in ("domain", family_of_domain[domain], "all"):
            accu, kept = lab["accuracy"].get(fam, {}).get("accuracy"), lab["kept"].get(fam)
            out.append("–" if accu is None else f"{accu:.2f} ({fmt(kept, 2)})")
        return out

    orig = summary["original"]["labels"]
    for d in DOMAINS:
        if d in orig:
            cells = ["original", "-", d, str(orig[d][classifiers[0]]["domain"]["n"])] + ["–"] * 9
            for c in classifiers:
                accs = orig[d][c]
                cells += [fmt(accs.get(f, {}).get("accuracy"), 2) for f in ("domain", family_of_domain[d], "all")]
            lines.append("| " + " | ".join(cells) + " |")
    for name, path in rows:
        for d in DOMAINS:
            f = summary[name][path].get(d)
            if not f:
                continue
            cells = [name, path, d, str(f["clips"]), fmt(f["mel_l1"]), fmt(f["mel_l1_vs_real"]), fmt(f["mrstft"]),
                     fmt(f["si_sdr_db"], 2), fmt(f.get("pitch_pitch_cents_rmse"), 1),
                     fmt(f.get("pitch_periodicity_rmse")), fmt(f.get("pitch_voicing_f1")),
                     fmt(f.get("pesq_wb"), 2), f"{f['comb_lines_pooled']} / {fmt(f['comb_lines_per_clip'], 2)}"]
            for c in classifiers:
                cells += label_cells(f["labels"].get(c), d)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(timing: dict[str, Any], names: list[str], threads: list[int]) -> str:
    head = ["vocoder"] + [f"{path} mels, s/5 s @{t} (median)" for path in INPUTS for t in threads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [f"{fmt(timing[name][path][t]['best'])} ({fmt(timing[name][path][t]['median'])})"
                 for path in INPUTS for t in threads]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines.append(f"\nVAE decode alone, s/5 s: {timing['vae_decode']}; load average {timing['load_average']} -> "
                 f"{timing['load_average_after']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- grid


def render_grid(grid: dict[int, dict[str, Any]], names: list[str], out_dir: Path, sample_rate: int) -> list[Path]:
    """One PNG per input: rows = clips, columns = the original and each vocoder; linear-frequency dB spectrograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    window = torch.hann_window(1024)
    written = []
    for path in INPUTS:
        cols = ["original"] + [f"{n}/{path}" for n in names]
        clips = sorted(grid)
        fig, axes = plt.subplots(len(clips), len(cols), figsize=(2.6 * len(cols), 1.9 * len(clips)), squeeze=False)
        for r, i in enumerate(clips):
            ref_db = None
            for c, col in enumerate(cols):
                spec = torch.stft(grid[i][col], 1024, 256, window=window, return_complex=True).abs()
                db = 20 * torch.log10(spec.clamp_min(1e-5)).numpy()
                ref_db = db.max() if ref_db is None else ref_db
                ax = axes[r][c]
                ax.imshow(db, origin="lower", aspect="auto", vmin=ref_db - 80, vmax=ref_db, cmap="magma",
                          extent=(0, grid[i][col].numel() / sample_rate, 0, sample_rate / 2000))
                ax.set_xticks([])
                ax.set_yticks([0, 2, 4, 6, 8] if c == 0 else [])
                if r == 0:
                    ax.set_title(col.replace(f"/{path}", ""), fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{grid[i]['domain']}\n{Path(grid[i]['file']).name}\nkHz", fontsize=8)
        fig.suptitle(f"{'real log-mel' if path == 'real' else 'VAE round-trip mel'} -> vocoder "
                     "(STFT 1024/256, dB, 80 dB range per clip)", fontsize=10)
        fig.tight_layout()
        target = out_dir / f"grid-{path}-mels.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    return written


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="corpus folder of a seed no model was trained on")
    p.add_argument("--codec", default=ROOT / "models" / "mel-codec", type=Path, help="mel codec folder (VAE, v1 vocoder, adapter)")
    p.add_argument("--vocoders", nargs="+", choices=list(VOCODERS), default=list(VOCODERS),
                   help="registry names (griffin-lim runs at 32 and 64 iterations)")
    p.add_argument("--adapter", default=None, help="hifigan-universal mel adapter folder (default: the codec folder's)")
    p.add_argument("--per-domain", type=int, default=100, help="clips per domain (default 100; fewer where the corpus has fewer)")
    p.add_argument("--limit", type=int, default=None, help="at most this many clips in all (a quick run)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time (default 1 2)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing")
    p.add_argument("--timing-only", action="store_true", help="only the timing (no clips are read)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per vocoder and thread count (median)")
    p.add_argument("--crepe", choices=("tiny", "full"), default="tiny", help="CREPE capacity (full: ~40x slower)")
    p.add_argument("--pitch-hop", type=int, default=160, help="CREPE hop in samples at 16 kHz (default 10 ms)")
    p.add_argument("--pitch-domains", nargs="+", choices=DOMAINS, default=["music", "speech"])
    p.add_argument("--labels", type=Path, default=ROOT / "models" / "labels")
    p.add_argument("--feature-labels", type=Path, default=ROOT / "models" / "labels-features")
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    p.add_argument("--grid", type=Path, default=None, help="folder for spectrogram grids of 2 clips per domain")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.per_domain < 1 or (args.limit is not None and args.limit < 1):
        p.error("--per-domain and --limit must be >= 1")

    rows = select_rows(args.data, args.per_domain, args.limit)
    codecs, skipped = build_variants(args.vocoders, args.codec, args.adapter)
    for why in skipped:
        print(f"skipped {why}", file=sys.stderr)
    if not codecs:
        p.error("no vocoder could be built")
    if args.timing_only:
        timing = time_variants(codecs, args.threads, repeats=args.repeats)
        print(timing_table(timing, list(codecs), args.threads))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            write_json(args.out, {"codec": str(args.codec), "timing": timing,
                                  "vocoders": {n: c.vocoder.spec() for n, c in codecs.items()}})
        return 0
    classifiers = load_classifiers(args.labels, args.feature_labels)
    grid_rows = set()
    if args.grid:
        for d in DOMAINS:
            grid_rows |= set([i for i, r in enumerate(rows) if r["domain"] == d][:2])
    counts = {d: sum(r["domain"] == d for r in rows) for d in DOMAINS}
    print(f"vocoder benchmark: {len(rows)} clips of {args.data} ({counts}), rows {list(codecs)}, "
          f"classifiers {list(classifiers)}, CREPE {args.crepe}, torch threads {torch.get_num_threads()}",
          file=sys.stderr)

    timing = None if args.no_timing else time_variants(codecs, args.threads, repeats=args.repeats)
    t0 = time.perf_counter()
    acc, per_clip, grid = evaluate(rows, args.data, codecs, classifiers, crepe_capacity=args.crepe,
                                   pitch_hop=args.pitch_hop, pitch_domains=tuple(args.pitch_domains),
                                   grid_rows=grid_rows)
    sample_rate = next(iter(codecs.values())).sample_rate
    summary = summarise(acc, classifiers, sample_rate / 1024)

    print(f"\n## Vocoders on {len(rows)} clips of {args.data} ({', '.join(f'{d} {n}' for d, n in counts.items())})\n")
    print(tables(summary, timing, args.threads, list(classifiers)))
    if timing:
        print(f"\nVAE decode alone, s/5 s: {timing['vae_decode']}; load average during timing "
              f"{timing['load_average']} -> {timing['load_average_after']}")
    if skipped:
        print("\nSkipped: " + "; ".join(skipped))
    if args.grid:
        for path in render_grid(grid, list(codecs), args.grid, sample_rate):
            print(f"grid: {path}")
    if args.out:
        report = {"data": str(args.data), "clips": counts, "codec": str(args.codec),
                  "vocoders": {n: c.vocoder.spec() for n, c in codecs.items()}, "skipped": skipped,
                  "classifiers": list(classifiers), "crepe": args.crepe, "pitch_hop": args.pitch_hop,
                  "pitch_domains": args.pitch_domains, "seconds": round(time.perf_counter() - t0, 1),
                  "timing": timing, "summary": summary, "per_clip": per_clip}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, report)
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
