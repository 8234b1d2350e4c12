"""Reconstruction report of a codec on a corpus split: `soundsmith eval codec --model DIR --data DIR`.

Per corpus domain (from `metadata.jsonl`) and overall:
- mel L1: mean |log-mel(reference) - log-mel(reconstruction)| in the AudioLDM front-end (codecs/mel.py)
  at the codec's rate (natural-log units; lower is better);
- MR-STFT: multi-resolution STFT distance, spectral convergence + log-magnitude L1 averaged over
  FFT sizes 512/1024/2048 (hop = size/4), the auraloss / Parallel WaveGAN definition (lower is better);
- SI-SDR in dB (scale-invariant SDR, Le Roux et al. 2019; higher is better; phase-sensitive, so a
  vocoder that rebuilds phase scores low even when it sounds right);
- RTF of encode and of decode: seconds of compute per second of audio (one clip at a time, batch 1,
  after one warm-up clip; lower is faster).

A codec is anything with `encode(wave [1, C, T]) -> latent | codes`, `decode(...) -> wave [1, C, T']`
and `sample_rate`; `load_codec` picks the class from the folder's config.json (`CODECS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
STFT_SIZES = (512, 1024, 2048)


# ---------------------------------------------------------------------------------------- loaders


def _mel_latent_codec() -> Callable[[Path], Any]:
    from soundsmith.codecs.mel_codec import MelLatentCodec

    return MelLatentCodec.from_pretrained


def _neural_codec() -> Callable[[Path], Any]:
    from soundsmith.codecs.neural_codec import NeuralCodec

    return NeuralCodec.from_pretrained


def _mel_rvq_codec() -> Callable[[Path], Any]:
    from soundsmith.codecs.mel_rvq import MelRVQCodec

    return MelRVQCodec.from_pretrained


# config.json "_class_name" -> factory returning a loader `folder -> codec`.
CODECS: dict[str, Callable[[], Callable[[Path], Any]]] = {
    "MelLatentCodec": _mel_latent_codec,
    "NeuralCodec": _neural_codec,
    "MelRVQCodec": _mel_rvq_codec,  # the token default: residual VQ over the mel VAE latent
}
DIFFUSERS_PIPELINES = {"AudioLDMPipeline": "MelLatentCodec", "MusicLDMPipeline": "MelLatentCodec",
                       "AudioLDM2Pipeline": "MelLatentCodec"}


MEL_CODECS = ("MelLatentCodec", "MelRVQCodec")  # decode through a vocoder, which `vocoder=` may replace


def load_codec(model_dir: str | os.PathLike, vocoder: str | dict | None = None) -> Any:
    """Load the codec in `model_dir`, picked by its config.json `_class_name` (or a diffusers model_index.json);
    `vocoder` (a registry name or spec) replaces a mel-domain codec's own, as generation's `--vocoder` does."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config, index = folder / "config.json", folder / "model_index.json"
    source = config if config.is_file() else index
    if not source.is_file():
        raise FileNotFoundError(f"{folder} is not a codec folder: it has no config.json")
    try:
        kind = json.loads(source.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{source}: not a readable JSON config ({' '.join(str(err).split())})") from None
    kind = DIFFUSERS_PIPELINES.get(kind, kind) if source == index else kind
    if kind not in CODECS:
        raise ValueError(f"{source}: _class_name={kind!r} is not a codec; known: {', '.join(sorted(CODECS))}")
    if vocoder is None:
        return CODECS[kind]()(folder)
    if kind not in MEL_CODECS:
        raise ValueError(f"--vocoder: {folder} is a {kind}, which decodes waveforms itself (a vocoder applies to "
                         f"{' and '.join(MEL_CODECS)} folders)")
    return CODECS[kind]()(folder, vocoder=vocoder)


# ---------------------------------------------------------------------------------------- metrics


def si_sdr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB of `[T]` signals (both made zero-mean)."""
    ref = reference.double() - reference.double().mean()
    est = estimate.double() - estimate.double().mean()
    alpha = (est @ ref) / (ref @ ref + eps)
    target = alpha * ref
    noise = est - target
    return float(10 * torch.log10((target @ target + eps) / (noise @ noise + eps)))


def multi_resolution_stft(reference: torch.Tensor, estimate: torch.Tensor, sizes: tuple[int, ...] = STFT_SIZES,
                          eps: float = 1e-7) -> float:
    """Mean over FFT sizes of spectral convergence + mean |log|S_ref| - log|S_est||, for `[T]` signals."""
    total = 0.0
    for n_fft in sizes:
        window = torch.hann_window(n_fft, dtype=torch.float32)

        def mag(x: torch.Tensor, n_fft: int = n_fft, window: torch.Tensor = window) -> torch.Tensor:
            spec = torch.stft(x.float(), n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
            return spec.abs().clamp_min(eps)  # [n_fft/2 + 1, frames]

        ref, est = mag(reference), mag(estimate)
        sc = torch.linalg.norm(ref - est) / torch.linalg.norm(ref)
        log_l1 = (ref.log() - est.log()).abs().mean()
        total += float(sc + log_l1)
    return total / len(sizes)


# ----------------------------------------------------------------------------------------- report


def read_split(data_dir: str | os.PathLike, split: str = "test", num_clips: int | None = None) -> list[dict]:
    """Rows of `data_dir/metadata.jsonl` in `split`; with `num_clips`, taken round-robin across domains
    (in file order) so that every domain is represented."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num_clips is not None and num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    root = Path(data_dir)
    meta = root / "metadata.jsonl"
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not meta.is_file():
        raise FileNotFoundError(f"no metadata.jsonl in data folder {root} (make one with `soundsmith data synth`)")
    by_domain: dict[str, list[dict]] = {}
    with open(meta, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row_split, file_name = row.get("split"), row["file_name"]
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise ValueError(f"{meta}:{line_no}: not a metadata row with a 'file_name'") from None
            if (row_split or Path(file_name).parts[0]) == split:
                by_domain.setdefault(str(row.get("domain", "unknown")), []).append(row)
    if not by_domain:
        raise ValueError(f"{meta}: no clips in split {split!r}")
    rows: list[dict] = []
    queues = [list(v) for v in by_domain.values()]
    while any(queues) and (num_clips is None or len(rows) < num_clips):
        for queue in queues:
            if queue and (num_clips is None or len(rows) < num_clips):
                rows.append(queue.pop(0))
    return rows


@torch.no_grad()
def codec_report_dict(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, num_clips: int | None = None,
                      split: str = "test", codec: Any = None, levels: int | None = None,
                      vocoder: str | dict | None = None) -> dict[str, Any]:
    """The report as a dict: {"model", "data", "split", "sample_rate", "codec", "device", "threads", "clips",
    "domains": {domain: {clips, seconds, mel_l1, mrstft, si_sdr_db, rtf_encode, rtf_decode}}} with an "all" domain.

    `codec` may be passed already loaded, on any device (then `model_dir` only labels the report).
    `levels`: RVQ levels to encode with (an RVQ codec only; default all). `vocoder`: see `load_codec`.
    """
    from soundsmith.codecs.audio import read_audio
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    rows = read_split(data_dir, split, num_clips)  # checks the data before the model loads
    codec = load_codec(model_dir, vocoder) if codec is None else codec
    if hasattr(codec, "eval"):
        codec.eval()
    if levels is not None:
        if not hasattr(codec, "max_levels"):
            raise ValueError(f"--levels: {model_dir} is a {type(codec).__name__}, which has no RVQ levels")
        if not 1 <= levels <= codec.max_levels:
            raise ValueError(f"--levels {levels} is out of range: {model_dir} has 1..{codec.max_levels} levels")
    encode_kwargs = {} if levels is None else {"n_levels": levels}
    sr = int(codec.sample_rate)
    channels = int(getattr(codec, "channels", 1))
    mel = MelSpectrogram(MelConfig(sample_rate=sr, f_max=min(8000.0, sr / 2)))

    params = next(iter(codec.parameters()), None) if hasattr(codec, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")

    def sync() -> None:  # CUDA runs asynchronously; time what it did, not what it queued
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(wave: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        wave = wave.to(device)
        sync()
        t0 = time.perf_counter()
        latent = codec.encode(wave, **encode_kwargs)
        sync()
        t1 = time.perf_counter()
        recon = codec.decode(latent)
        sync()
        t2 = time.perf_counter()
        return recon.cpu(), t1 - t0, t2 - t1

    per_clip: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        wave, _ = read_audio(Path(data_dir) / row["file_name"], sample_rate=sr, channels=channels)
        x = torch.from_numpy(wave)[None]  # [1, C, T]
        if i == 0:
            run(x)  # warm-up: lazy initialisation and allocator growth stay out of the RTF
        recon, t_enc, t_dec = run(x)
        n = min(x.shape[-1], recon.shape[-1])
        ref, est = x[0].mean(0)[:n], recon[0].float().mean(0)[:n]  # [T] mono
        per_clip.append({
            "domain": str(row.get("domain", "unknown")), "seconds": n / sr, "t_enc": t_enc, "t_dec": t_dec,
            "mel_l1": float((mel(ref[None]) - mel(est[None])).abs().mean()),
            "mrstft": multi_resolution_stft(ref, est), "si_sdr_db": si_sdr(ref, est),
        })

    def summary(clips: list[dict[str, Any]]) -> dict[str, float]:
        seconds = sum(c["seconds"] for c in clips)
        return {
            "clips": len(clips), "seconds": round(seconds, 3),
            "mel_l1": _mean(c["mel_l1"] for c in clips), "mrstft": _mean(c["mrstft"] for c in clips),
            "si_sdr_db": _mean(c["si_sdr_db"] for c in clips),
            "rtf_encode": sum(c["t_enc"] for c in clips) / seconds,
            "rtf_decode": sum(c["t_dec"] for c in clips) / seconds,
        }

    domains = sorted({c["domain"] for c in per_clip})
    report = {d: summary([c for c in per_clip if c["domain"] == d]) for d in domains}
    report["all"] = summary(per_clip)
    return {"model": str(model_dir), "data": str(data_dir), "split": split, "sample_rate": sr,
            "codec": type(codec).__name__, "device": str(device), "threads": torch.get_num_threads(),
            "clips": len(per_clip), "levels": levels if levels is not None else getattr(codec, "n_levels", None),
            "domains": report}


def codec_report(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, num_clips: int | None = None,
                 split: str = "test", levels: int | None = None, vocoder: str | None = None) -> str:
    """The report as a printable table (see the module docstring for the metrics)."""
    r = codec_report_dict(model_dir, data_dir, num_clips=num_clips, split=split, levels=levels, vocoder=vocoder)
    quantized = f", {r['levels']} RVQ levels" if r["levels"] is not None else ""
    lines = [f"codec report: {r['codec']} {r['model']} on {r['data']} (split {r['split']}, {r['clips']} clips, "
             f"{r['sample_rate']} Hz{quantized}, {r['device']}, CPU threads {r['threads']})",
             f"{'domain':<10}{'clips':>6}{'mel L1':>9}{'MR-STFT':>9}{'SI-SDR dB':>11}{'RTF enc':>9}{'RTF dec':>9}"]
    for name, m in r["domains"].items():
        lines.append(f"{name:<10}{m['clips']:>6}{m['mel_l1']:>9.3f}{m['mrstft']:>9.3f}{m['si_sdr_db']:>11.2f}"
                     f"{m['rtf_encode']:>9.4f}{m['rtf_decode']:>9.4f}")
    return "\n".join(lines)


def _mean(values: Any) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")
