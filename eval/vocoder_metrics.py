"""Metrics of a mel -> wave decoder against the clip whose mel it was given (benchmarks/vocoders.py runs them).

- re-analysis mel L1: decode a log-mel, compute the log-mel of the output again, mean |difference| to the
  log-mel that went in (natural log; 0 for a perfect inverse, whatever the phase);
- MR-STFT and SI-SDR against the original wave: `eval/codec_report.py`'s `multi_resolution_stft`, `si_sdr`;
- pitch and periodicity error on periodic sounds (CARGAN, Morrison et al. 2022; Vocos, Siuzdak 2023), from
  CREPE tracks of both waves (eval/crepe.py): RMSE in cents of the pitch over the frames voiced in both,
  RMSE of the periodicity over all frames, and the F1 of the voiced/unvoiced decision. Frames are pooled
  over clips (the sums of `PitchErrors` add up), as CARGAN's `Pitch` metric accumulates them;
- PESQ (ITU-T P.862.2 wide band, 16 kHz) of speech, through the `pesq` package;
- label accuracy kept: the accuracy of a label classifier on the decoded clips over its accuracy on the
  originals, per label family;
- a comb check: the output's long-term average spectrum over the input's, in dB, minus its running median
  (the broad tilt a decoder may add); narrow peaks standing out of it, which are also peaks of the output's
  own spectrum, are lines the decoder adds. HiFi-GAN's transposed-convolution upsampling leaves such a
  comb of fixed lines (Pons et al., ICASSP 2021).

Each metric is a plain function of arrays or tensors; none loads a model or reads a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .codec_report import multi_resolution_stft, si_sdr
from .crepe import PitchTrack

__all__ = ["mel_l1", "multi_resolution_stft", "si_sdr", "PitchErrors", "pitch_errors", "pesq_wb",
           "long_term_spectrum", "power_db", "spectrum_ratio_db", "comb_peaks", "accuracy_kept"]

COMB_THRESHOLD_DB = 6.0  # a line must stand this far above its surroundings
COMB_MAX_WIDTH = 3  # ... and be narrower than this many bins (its -3 dB width: a Hann-windowed tone is 1-2 bins)
COMB_MEDIAN_BINS = 15  # the running median that gives the surroundings (15 bins = 234 Hz at n_fft 1024, 16 kHz)


# ------------------------------------------------------------------------------------------ magnitude


def mel_l1(reference: Tensor, estimate: Tensor) -> float:
    """Mean |difference| of two log-mels `[F, S]` (or `[B, F, S]`), over their common frames."""
    if reference.shape[:-1] != estimate.shape[:-1]:
        raise ValueError(f"mel L1 needs the same bins: {list(reference.shape)} vs {list(estimate.shape)}")
    n = min(reference.shape[-1], estimate.shape[-1])
    return float((reference[..., :n].float() - estimate[..., :n].float()).abs().mean())


# ---------------------------------------------------------------------------------------------- pitch


@dataclass
class PitchErrors:
    """Sums over frames, so that clips pool by addition; `summary()` turns them into the reported figures."""

    squared_cents: float = 0.0  # sum over frames voiced in both of (1200 log2(f_est / f_ref))^2
    voiced_both: int = 0
    squared_periodicity: float = 0.0  # sum over all frames of (p_est - p_ref)^2
    frames: int = 0
    true_positives: int = 0  # voiced in both
    false_positives: int = 0  # voiced in the estimate only
    false_negatives: int = 0  # voiced in the reference only

    def __add__(self, other: PitchErrors) -> PitchErrors:
        return PitchErrors(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def summary(self) -> dict[str, float]:
        """{"pitch_cents_rmse", "periodicity_rmse", "voicing_f1", "voiced_frames", "frames"} (NaN where undefined)."""
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        return {
            "pitch_cents_rmse": math.sqrt(self.squared_cents / self.voiced_both) if self.voiced_both else math.nan,
            "periodicity_rmse": math.sqrt(self.squared_periodicity / self.frames) if self.frames else math.nan,
            "voicing_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
            "voiced_frames": self.voiced_both, "frames": self.frames,
        }


def pitch_errors(reference: PitchTrack, estimate: PitchTrack) -> PitchErrors:
    """Frame-wise comparison of two CREPE tracks of the same clip (the shorter one's frames)."""
    n = min(len(reference.pitch), len(estimate.pitch))
    ref_v, est_v = reference.voiced[:n], estimate.voiced[:n]
    both = ref_v & est_v
    cents = 1200.0 * np.log2(estimate.pitch[:n][both] / reference.pitch[:n][both])
    dp = estimate.periodicity[:n] - reference.periodicity[:n]
    return PitchErrors(squared_cents=float((cents ** 2).sum()), voiced_both=int(both.sum()),
                       squared_periodicity=float((dp ** 2).sum()), frames=n,
                       true_positives=int(both.sum()), false_positives=int((~ref_v & est_v).sum()),
                       false_negatives=int((ref_v & ~est_v).sum()))


def pesq_wb(reference: Tensor | np.ndarray, estimate: Tensor | np.ndarray, sample_rate: int = 16_000) -> float:
    """Wide-band PESQ (MOS-LQO, 1.04-4.64) of `[T]` signals at 16 kHz; NaN where PESQ finds no speech."""
    if sample_rate != 16_000:
        raise ValueError(f"wide-band PESQ takes 16000 Hz audio, got {sample_rate} Hz (resample first)")
    from pesq import PesqError, pesq

    ref = np.asarray(reference, dtype=np.float32).reshape(-1)
    est = np.asarray(estimate, dtype=np.float32).reshape(-1)
    n = min(len(ref), len(est))
    try:
        return float(pesq(sample_rate, ref[:n], est[:n], "wb"))
    except PesqError:  # e.g. no utterance detected in a near-silent clip
        return math.nan


# ----------------------------------------------------------------------------------------------- comb


def long_term_spectrum(wave: Tensor, n_fft: int = 1024, hop_length: int = 256) -> np.ndarray:
    """Long-term average power spectrum `[n_fft / 2 + 1]` of a `[T]` wave (Hann window, mean over frames)."""
    if wave.dim() != 1:
        raise ValueError(f"long_term_spectrum takes a 1-D wave, got {list(wave.shape)}")
    spec = torch.stft(wave.double(), n_fft, hop_length, window=torch.hann_window(n_fft, dtype=torch.float64),
                      center=True, return_complex=True)  # [n_freqs, frames]
    return spec.abs().pow(2).mean(1).numpy()


def power_db(spectrum: np.ndarray, floor_db: float = -100.0) -> np.ndarray:
    """10 log10 of a power spectrum, floored `floor_db` under its peak (0 dB = the peak)."""
    x = np.asarray(spectrum, dtype=np.float64)
    peak = max(float(x.max()), 1e-30)
    return 10.0 * np.log10(np.maximum(x, peak * 10 ** (floor_db / 10)) / peak)


def spectrum_ratio_db(output: np.ndarray, reference: np.ndarray, floor_db: float = -100.0) -> np.ndarray:
    """10 log10(output / reference) per bin, each spectrum floored `floor_db` under its own peak."""
    return power_db(output, floor_db) - power_db(reference, floor_db)


def running_median(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a centred window of `width` bins (edges reflected)."""
    half = width // 2
    padded = np.pad(x, half, mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def comb_peaks(ratio_db: np.ndarray, output_db: np.ndarray | None = None, *, threshold_db: float = COMB_THRESHOLD_DB,
               max_width: int = COMB_MAX_WIDTH, median_bins: int = COMB_MEDIAN_BINS) -> list[int]:
    """Bins of the narrow peaks of a spectrum ratio in dB `[K]` (see `spectrum_ratio_db`).

    The ratio minus its running median over `median_bins` is the excess; a peak is a local maximum whose
    excess exceeds `threshold_db` and whose -3 dB width — the run of bins around it within 3 dB of its top —
    is under `max_width` bins. Bin 0 (DC) is skipped. With `output_db` (the output's own spectrum in dB,
    `power_db`), a peak must also stand half the threshold over the output's own running median: a narrow
    valley of the input (between the harmonics of a low note) that the output fills with noise raises the
    ratio but puts no line into the output.
    """
    r = np.asarray(ratio_db, dtype=np.float64)
    if r.ndim != 1 or len(r) < median_bins:
        raise ValueError(f"comb_peaks needs a 1-D ratio of at least {median_bins} bins, got shape {r.shape}")
    excess = r - running_median(r, median_bins)
    if output_db is not None:
        o = np.asarray(output_db, dtype=np.float64)
        if o.shape != r.shape:
            raise ValueError(f"comb_peaks: output_db {o.shape} does not match the ratio {r.shape}")
        own = o - running_median(o, median_bins)
    peaks = []
    for k in range(1, len(r)):
        left = excess[k - 1]
        right = excess[k + 1] if k + 1 < len(r) else -np.inf
        if excess[k] <= threshold_db or excess[k] < left or excess[k] <= right:
            continue
        if output_db is not None and own[k] < threshold_db / 2:
            continue
        top = excess[k] - 3.0
        lo, hi = k, k
        while lo > 0 and excess[lo - 1] >= top:
            lo -= 1
        while hi + 1 < len(r) and excess[hi + 1] >= top:
            hi += 1
        if hi - lo + 1 < max_width:
            peaks.append(k)
    return peaks


# --------------------------------------------------------------------------------------------- labels


def accuracy_kept(decoded: dict[str, dict[str, float]], original: dict[str, dict[str, float]]
                  ) -> dict[str, float]:
    """Per family (as `eval.metrics.label_accuracy` returns them): accuracy on decoded / accuracy on originals
    (NaN where the originals score 0)."""
    out = {}
    for family, m in original.items():
        if family in decoded:
            out[family] = decoded[family]["accuracy"] / m["accuracy"] if m["accuracy"] > 0 else math.nan
    return out
