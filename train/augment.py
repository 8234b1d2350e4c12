"""Corpus augmentation: room reverb, background noise at an SNR, gain; recorded in the labels.

The renderers return dry signals; `augment` adds the recording conditions with probabilities drawn
from the clip's own rng, and returns the record the corpus stores as `labels["augmentation"]`:

    {"reverb": null | {"room_size", "wet", "damping"}, "gain_db": float,
     "noise": null | {"kind": "white" | "pink" | "brown", "snr_db": float}}

Every drawn parameter is rounded before it is applied, so the record describes the clip exactly.
The result never clips (peak <= PEAK = 0.989, so <= 0.99 once written as 16-bit PCM) and is never silent (RMS >= MIN_RMS > 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PEAK = 0.989  # not 0.99: libsndfile rounds -0.99 to -32441 / 32768 = -0.99002 when writing 16-bit PCM
MIN_RMS = 2e-3  # twice the corpus's "silent" threshold (1e-3), so 16-bit rounding cannot cross it
NOISE_KINDS = ("white", "pink", "brown")


@dataclass(frozen=True)
class AugmentConfig:
    p_reverb: float = 0.35
    p_reverb_far: float = 0.7  # SFX labelled "far" are more often reverberant: distance sounds like a room
    room_size: tuple[float, float] = (0.1, 0.9)
    wet: tuple[float, float] = (0.08, 0.4)
    damping: tuple[float, float] = (0.2, 0.8)
    p_noise: float = 0.3
    snr_db: tuple[float, float] = (10.0, 40.0)  # >= 10 dB: the labelled sound stays the foreground
    gain_db: tuple[float, float] = (-6.0, 3.0)  # small, so the music "loudness" label stays true


def augment(wave: np.ndarray, sample_rate: int, rng: np.random.Generator, *, far: bool = False,
            config: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, dict[str, Any]]:
    """Augment one mono clip `[T]` (float32). Returns (augmented `[T]` float32, augmentation record).

    Args:
        wave: the dry clip, peak <= 1, not silent.
        sample_rate: in Hz.
        rng: the clip's generator; all randomness comes from it.
        far: the clip is labelled as distant (raises the reverb probability to `p_reverb_far`).
        config: probabilities and ranges (default AugmentConfig()).
    """
    if wave.ndim != 1:
        raise ValueError(f"augment takes a mono clip [T], got shape {wave.shape}")
    # Draw every decision first, in a fixed order, so the record does not depend on the signal.
    use_reverb = rng.random() < (config.p_reverb_far if far else config.p_reverb)
    reverb = {"room_size": _uniform(rng, config.room_size), "wet": _uniform(rng, config.wet),
              "damping": _uniform(rng, config.damping)}
    use_noise = rng.random() < config.p_noise
    noise = {"kind": NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))], "snr_db": _uniform(rng, config.snr_db, 1)}
    gain_db = _uniform(rng, config.gain_db, 1)

    out = wave.astype(np.float32, copy=True)
    if use_reverb:
        out = apply_reverb(out, sample_rate, **reverb)
    if use_noise:
        out = out + colored_noise(noise["kind"], len(out), rng) * (_rms(out) / 10 ** (noise["snr_db"] / 20))
    out = out * np.float32(10 ** (gain_db / 20))
    # Peak and floor guards; the applied gain is what the record reports.
    peak, rms = float(np.abs(out).max()), _rms(out)
    fix = 1.0
    if peak > PEAK:
        fix = PEAK / peak
    elif rms < MIN_RMS:
        fix = min(MIN_RMS / max(rms, 1e-12), PEAK / max(peak, 1e-12))
    if fix != 1.0:
        out = out * np.float32(fix)
        gain_db = round(gain_db + 20 * float(np.log10(fix)), 2)
    record = {"reverb": reverb if use_reverb else None, "gain_db": gain_db, "noise": noise if use_noise else None}
    return out.astype(np.float32, copy=False), record


def apply_reverb(wave: np.ndarray, sample_rate: int, *, room_size: float, wet: float, damping: float) -> np.ndarray:
    """Freeverb-style room (pedalboard.Reverb, deterministic); dry + wet keep roughly the input level."""
    import pedalboard

    reverb = pedalboard.Reverb(room_size=room_size, damping=damping, wet_level=wet, dry_level=1.0 - wet, width=1.0)
    return reverb.process(wave.astype(np.float32, copy=False), float(sample_rate), reset=True)  # [T]


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise `[length]` with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum.

    Shaped in the frequency domain (one rfft) rather than with IIR filters: exact slopes, no start-up
    transient, and the same cost for every colour.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    white = rng.standard_normal(length)
    if kind != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0  # no DC boost
        spectrum /= f ** (0.5 if kind == "pink" else 1.0)  # amplitude ~ f^(-alpha/2)
        white = np.fft.irfft(spectrum, n=length)
        white -= white.mean()
    return (white / max(_rms(white), 1e-12)).astype(np.float32)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 3) -> float:
    return round(float(rng.uniform(*bounds)), digits)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
