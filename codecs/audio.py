"""Audio I/O and the small signal helpers every component shares.

In memory, audio is float32 in [-1, 1] shaped `[C, T]` for one clip (C channels, T samples) or
`[B, C, T]` for a batch, always next to an explicit sample rate. These functions accept numpy
arrays or torch tensors and return the type they were given (reading returns numpy).

Writing is atomic: the file is written to a temporary name in the destination folder and then
renamed, so a killed process never leaves a half-written WAV/FLAC behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from soundsmith.core.files import atomic_write, check_writable_folder, one_line, write_json

log = logging.getLogger(__name__)

READ_FORMATS = ("wav", "flac", "ogg")
WRITE_FORMATS = {"wav": ("PCM_16", "PCM_24", "FLOAT"), "flac": ("PCM_16", "PCM_24")}
MAX_SAMPLE_RATE = 768_000

# Output level of the pipelines: -16 LUFS integrated (where streaming platforms level speech and podcasts,
# near AudioCraft's 14 dB loudness headroom), peaks capped at -1 dBFS to leave room for lossy encoding
DEFAULT_LOUDNESS_LUFS = -16.0
LOUDNESS_PEAK_DB = -1.0


def check_sample_rate(sample_rate: int, what: str = "sample_rate") -> int:
    """Return `sample_rate` as an int, or raise a ValueError naming `what` and the allowed range."""
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer():
        raise ValueError(f"{what} must be a whole number of Hz in [1, {MAX_SAMPLE_RATE}], got {sample_rate!r}")
    if not 0 < int(sample_rate) <= MAX_SAMPLE_RATE:
        raise ValueError(f"{what} must be in [1, {MAX_SAMPLE_RATE}] Hz, got {sample_rate}")
    return int(sample_rate)


def check_wave(wave: Any, what: str = "audio") -> None:
    """Raise a ValueError if `wave` ([C, T] or [B, C, T]) is empty or holds NaN/inf samples."""
    if wave.ndim not in (2, 3):
        raise ValueError(f"{what} must be shaped [channels, samples] or [batch, channels, samples], "
                         f"got shape {tuple(wave.shape)}")
    if wave.shape[-1] == 0 or wave.shape[-2] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(wave.shape)})")
    finite = np.isfinite(wave).all() if isinstance(wave, np.ndarray) else bool(wave.isfinite().all())
    if not finite:
        raise ValueError(f"{what} contains NaN or infinite samples")


# ----------------------------------------------------------------------------------------------- read


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header of an audio file (sample rate, channels, frames) without decoding it."""
    path = _existing_file(path)
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{path}: not a readable audio file ({one_line(err)})") from None


def read_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC/OGG file into float32 `[C, T]` and its sample rate.

    Args:
        path: the file.
        sample_rate: resample to this rate (soxr) if given; default None keeps the file's rate.
        channels: 1 (mono mix-down) or 2 (mono duplicated) if given; default None keeps the file's.
        offset_s: start reading this many seconds in (default 0).
        duration_s: read at most this many seconds (default None: to the end).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, is empty, or holds NaN/inf samples.
    """
    path = _existing_file(path)
    try:
        with sf.SoundFile(str(path)) as f:
            file_sr = f.samplerate
            start = int(round(offset_s * file_sr))
            if start < 0 or (start > 0 and start >= f.frames):
                raise ValueError(f"{path}: offset_s={offset_s} is outside the file's {f.frames / file_sr:.3f} s")
            f.seek(start)
            frames = -1 if duration_s is None else int(round(duration_s * file_sr))
            data = f.read(frames, dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{path}: not a readable audio file ({one_line(err)})") from None
    wave = np.ascontiguousarray(data.T)  # [C, T]
    check_wave(wave, what=str(path))
    if channels is not None:
        wave = to_channels(wave, channels)
    if sample_rate is not None:
        wave = resample(wave, file_sr, sample_rate)
        file_sr = sample_rate
    return wave, int(file_sr)


# ---------------------------------------------------------------------------------------------- write


def write_audio(
    path: str | os.PathLike,
    wave: Any,
    sample_rate: int,
    *,
    subtype: str = "PCM_16",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write one clip `[C, T]` (or `[T]` mono) as WAV or FLAC, atomically.

    Args:
        path: destination; its suffix (.wav or .flac) picks the format. The folder must exist.
        wave: float samples in [-1, 1]; numpy or torch.
        sample_rate: in Hz.
        subtype: "PCM_16" (default), "PCM_24", or "FLOAT" (WAV only).
        metadata: if given, written next to the audio as `<name>.json` (prompt, seed, model, ...).

    Returns the path written. Samples beyond [-1, 1] are clipped for PCM output, with a warning.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in WRITE_FORMATS:
        raise ValueError(f"{path}: unsupported output format '.{fmt}'; use one of "
                         + ", ".join(f".{f}" for f in WRITE_FORMATS))
    if subtype not in WRITE_FORMATS[fmt]:
        raise ValueError(f"subtype must be one of {', '.join(WRITE_FORMATS[fmt])} for .{fmt}, got {subtype!r}")
    sample_rate = check_sample_rate(sample_rate)
    wave = _to_numpy(wave)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise ValueError(f"write_audio takes one clip [channels, samples], got shape {tuple(wave.shape)}")
    check_wave(wave, what=f"audio for {path}")
    peak = float(np.abs(wave).max())
    if subtype != "FLOAT" and peak > 1.0:
        log.warning("%s: peak %.3f exceeds 1.0; clipping to [-1, 1]", path, peak)
        wave = np.clip(wave, -1.0, 1.0)
    check_writable_folder(path.parent)  # before the encoder runs: the error names the folder

    def write(tmp: str) -> None:
        sf.write(tmp, wave.T, sample_rate, subtype=subtype, format=fmt.upper())

    atomic_write(path, write)
    if metadata is not None:
        write_json(path.with_suffix(".json"), dict(metadata))
    return path


# ------------------------------------------------------------------------------------ signal helpers


def resample(wave: Any, orig_sr: int, target_sr: int) -> Any:
    """Resample `[..., T]` from `orig_sr` to `target_sr` (soxr, high quality). Keeps numpy/torch type."""
    orig_sr = check_sample_rate(orig_sr, "orig_sr")
    target_sr = check_sample_rate(target_sr, "target_sr")
    if orig_sr == target_sr:
        return wave
    import soxr

    arr = _to_numpy(wave).astype(np.float32, copy=False)
    lead = arr.shape[:-1]
    flat = arr.reshape(-1, arr.shape[-1])  # [N, T]
    out = soxr.resample(flat.T, orig_sr, target_sr, quality="HQ").T  # soxr wants [T, N]
    out = np.ascontiguousarray(out, dtype=np.float32).reshape(*lead, -1)
    return _like(out, wave)


def resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """Number of samples `resample` returns for `num_samples` input samples."""
    g = gcd(orig_sr, target_sr)
    return -(-num_samples * (target_sr // g) // (orig_sr // g))


def to_channels(wave: Any, channels: int) -> Any:
    """Convert `[..., C, T]` to `channels` (1: mean of channels; 2: mono duplicated, stereo kept)."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels}")
    c = wave.shape[-2]
    if c == channels:
        return wave
    if channels == 1:
        return wave.mean(-2, keepdims=True) if isinstance(wave, np.ndarray) else wave.mean(-2, keepdim=True)
    if c == 1:
        reps = [1] * (wave.ndim - 2) + [2, 1]
        return np.tile(wave, reps) if isinstance(wave, np.ndarray) else wave.repeat(*reps)
    raise ValueError(f"cannot convert {c} channels to stereo; mix down to mono first")


def peak_normalize(wave: Any, peak_db: float = -1.0) -> Any:
    """Scale so the absolute peak is `peak_db` dBFS (default -1). Silence is returned unchanged."""
    if peak_db > 0:
        raise ValueError(f"peak_db must be <= 0 dBFS, got {peak_db}")
    peak = float(abs(wave).max())
    if peak == 0.0:
        return wave
    return wave * (10 ** (peak_db / 20) / peak)


def loudness(wave: Any, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, pyloudnorm) of one clip `[C, T]`."""
    import pyloudnorm

    sample_rate = check_sample_rate(sample_rate)
    arr = _to_numpy(wave).astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"loudness takes one clip [channels, samples], got shape {tuple(arr.shape)}")
    if arr.shape[-1] < 0.4 * sample_rate:
        raise ValueError(f"loudness needs at least 0.4 s of audio, got {arr.shape[-1] / sample_rate:.3f} s")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(arr.T))


def loudness_normalize(wave: Any, sample_rate: int, target_lufs: float = -23.0, peak_db: float = -1.0) -> Any:
    """Scale a clip `[C, T]` to `target_lufs` (default -23, EBU R128), then cap the peak at `peak_db`.

    Silent clips (loudness -inf) are returned unchanged. If the peak cap lowers the gain, it is logged.
    """
    if not -70.0 <= target_lufs <= 0.0:
        raise ValueError(f"target_lufs must be in [-70, 0], got {target_lufs}")
    current = loudness(wave, sample_rate)
    if not np.isfinite(current):
        return wave
    out = wave * (10 ** ((target_lufs - current) / 20))
    limit = 10 ** (peak_db / 20)
    peak = float(abs(out).max())
    if peak > limit:
        log.info("loudness_normalize: peak %.2f dBFS above %.1f; lowering gain", 20 * np.log10(peak), peak_db)
        out = out * (limit / peak)
    return out


# ---------------------------------------------------------------------------------------- internals


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"not a file: {path}")
    return path


def _to_numpy(wave: Any) -> np.ndarray:
    if isinstance(wave, np.ndarray):
        return wave
    if hasattr(wave, "detach"):  # torch.Tensor, without importing torch here
        return wave.detach().to("cpu").float().numpy()
    return np.asarray(wave, dtype=np.float32)


def _like(arr: np.ndarray, ref: Any) -> Any:
    if isinstance(ref, np.ndarray):
        return arr
    import torch

    return torch.from_numpy(arr).to(device=ref.device)
