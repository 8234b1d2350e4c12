"""Procedural sound effects and ambience for the synthetic corpus (issue 4).

Every class is a small, physically motivated recipe in numpy/scipy, vectorised over samples:

- noise shaping: white noise through biquads, or noise generated frame by frame in the STFT domain
  with a time-varying spectral envelope (`_shaped_noise`: wind, thunder, ocean waves);
- granular textures: sparse impulse trains turned into noise bursts by a one-pole decay envelope
  (`_bursts`: rain drops, fire crackles, applause, gravel);
- modal synthesis: sums of damped sinusoids placed at strike times (`_modal_template`, `_place`:
  bells, phones, knocks, clocks, footsteps, glass shards);
- FM / additive tones with a pitch contour and gates (siren, alarm, phone, car horn), birds as chirp
  sweeps and trills, crickets as pulsed high tones, a source-filter dog bark (glottal pulse train
  through formant resonators), an engine as a firing-rate pulse train through exhaust resonances.

Contract (see the corpus interface): `render_sfx(rng, duration_s, sample_rate) -> (wave [T] float32,
labels)`, all randomness from `rng`, `T == round(duration_s * sample_rate)`, peak <= 0.99, RMS > 1e-3.
The signal is dry; synth.py adds reverb, gain and noise afterwards. About a quarter of the clips mix a
foreground and a background class ("X while Y").

Each renderer in `RENDERERS` is `fn(rng, n, sr, params) -> (wave [n] float32, details)`; the level is
arbitrary, `render_sfx_class` mixes, applies distance and normalises.

Labels: `{"domain": "sfx", "classes": ["dog barking", "rain"], "intensity": "heavy", "pitch": "low",
"distance": "far", "details": {"dog barking": {"f0_hz": 171.2, ...}, "rain": {..., "level_db": -9.1},
"far_lowpass_hz": 2210.4}}`: one parameter dict per class (the background's carries its level relative
to the foreground), plus the air-absorption cut-off of far clips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.signal import lfilter, sosfilt
from soundsmith.codecs.audio import check_sample_rate
from soundsmith.core.vocabulary import SFX_CLASSES

INTENSITIES: tuple[str, ...] = ("light", "moderate", "heavy")
PITCHES: tuple[str, ...] = ("low", "medium", "high")
DISTANCES: tuple[str, ...] = ("near", "far")
MIX_PROBABILITY = 0.25  # share of clips with a background class ("X while Y")
MIN_SAMPLE_RATE = 8_000  # below this the high classes (crickets, glass, birds) have no room

_DENSITY = {"light": 0.5, "moderate": 1.0, "heavy": 2.0}  # events/s and texture density multiplier
_PITCH_SCALE = {"low": 0.7, "medium": 1.0, "high": 1.4}  # frequency multiplier
_TARGET_RMS = {"light": 0.05, "moderate": 0.08, "heavy": 0.13}  # active RMS after normalisation
_FAR_GAIN = 0.6  # far sources are quieter (and low-passed); synth.py adds the reverb
_BACKGROUND_DB = (-15.0, -6.0)  # background level relative to the foreground (active RMS)

Renderer = Callable[[np.random.Generator, int, int, "SfxParams"], tuple[np.ndarray, dict[str, Any]]]


@dataclass(frozen=True)
class SfxParams:
    """The clip-level choices every renderer reads."""

    intensity: str  # light | moderate | heavy
    pitch: str  # low | medium | high
    distance: str  # near | far
    density: float  # from intensity, jittered: 0.5 light, 1 moderate, 2 heavy
    pitch_scale: float  # from pitch, jittered: 0.7 low, 1 medium, 1.4 high


# ============================================================================================ helpers

_F32 = np.float32


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise [n] float32. Uniform (4x cheaper than normal); filtering makes it Gaussian."""
    return (rng.random(n, dtype=_F32) - _F32(0.5)) * _F32(2 * np.sqrt(3))


def _biquad(kind: str, f0: float, sr: int, q: float = 0.7071) -> np.ndarray:
    """One second-order section [6] (RBJ cookbook). Written out because scipy's `butter` costs ~1 ms a call."""
    f0 = float(np.clip(f0, 10.0, 0.45 * sr))
    w = 2 * np.pi * f0 / sr
    cw, alpha = np.cos(w), np.sin(w) / (2 * q)
    if kind == "lowpass":
        b = [(1 - cw) / 2, 1 - cw, (1 - cw) / 2]
    elif kind == "highpass":
        b = [(1 + cw) / 2, -(1 + cw), (1 + cw) / 2]
    elif kind == "bandpass":  # 0 dB peak gain
        b = [alpha, 0.0, -alpha]
    else:
        raise AssertionError(kind)
    a0 = 1 + alpha
    return np.array([b[0] / a0, b[1] / a0, b[2] / a0, 1.0, -2 * cw / a0, (1 - alpha) / a0])


def _resonator(f0: float, bw: float, sr: int) -> np.ndarray:
    """Klatt formant resonator as a section [6]: unity gain at DC, a peak at f0 of bandwidth bw Hz."""
    f0 = float(np.clip(f0, 10.0, 0.45 * sr))
    r = np.exp(-np.pi * bw / sr)
    a1, a2 = -2 * r * np.cos(2 * np.pi * f0 / sr), r * r
    return np.array([1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])


def _filter(x: np.ndarray, *sections: np.ndarray) -> np.ndarray:
    """Run `x` [n] through the cascade of biquad `sections`, in x's dtype."""
    return sosfilt(np.stack(sections).astype(x.dtype), x)


def _decay(x: np.ndarray, tau_s: float, sr: int) -> np.ndarray:
    """One-pole exponential decay (time constant tau_s) applied to an impulse train [n]."""
    a = np.exp(-1.0 / (max(tau_s, 1e-5) * sr))
    return lfilter(np.array([1.0], x.dtype), np.array([1.0, -a], x.dtype), x)


def _impulses(n: int, pos: np.ndarray, amps: np.ndarray | float = 1.0) -> np.ndarray:
    """Sparse impulse train [n] float32 with `amps` at sample positions `pos` (outside [0, n) dropped)."""
    pos = np.asarray(pos, dtype=np.int64)
    amps = np.broadcast_to(np.asarray(amps, dtype=np.float64), pos.shape)
    keep = (pos >= 0) & (pos < n)
    return np.bincount(pos[keep], weights=amps[keep], minlength=n)[:n].astype(_F32)


def _bursts(noise: np.ndarray, pos: np.ndarray, amps: np.ndarray, tau_s: float, sr: int) -> np.ndarray:
    """Many short noise bursts at once: noise [n] times the decaying envelope of an impulse train."""
    env = _decay(_impulses(len(noise), pos, amps), tau_s, sr)
    return noise * env


def _place(n: int, starts: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Sum events [N, L] (or one template [L] for every start) into a signal [n] at sample `starts` [N].

    One bincount over all event samples (events running past the end are cut, starts outside [0, n)
    dropped): the vectorised overlap-add of many short, possibly overlapping events.
    """
    starts = np.asarray(starts, dtype=np.int64)
    events = np.asarray(events)
    if events.ndim == 1:
        events = np.broadcast_to(events, (len(starts), len(events)))
    keep = (starts >= 0) & (starts < n)
    starts, events = starts[keep], events[keep]
    length = events.shape[1]
    idx = (starts[:, None] + np.arange(length)[None, :]).ravel()  # [N * L]
    out = np.bincount(idx, weights=events.astype(np.float64).ravel(), minlength=n + length)
    return out[:n].astype(_F32)


def _modal_template(sr: int, length_s: float, freqs, t60s, amps, phase=0.0) -> np.ndarray:
    """Sum of damped sinusoids [L] float32: one strike of a resonant object (bell, door, glass)."""
    t = np.arange(max(1, int(length_s * sr)), dtype=_F32) / _F32(sr)  # [L]
    freqs = np.minimum(np.asarray(freqs, dtype=_F32), _F32(0.45 * sr))[:, None]  # [M, 1]
    decay = (6.91 / np.asarray(t60s, dtype=_F32))[:, None]  # ln(1000): -60 dB after t60
    amps = np.asarray(amps, dtype=_F32)[:, None]
    ph = np.broadcast_to(np.asarray(phase, dtype=_F32), (freqs.shape[0],))[:, None]
    return (amps * np.exp(-decay * t) * np.sin(_F32(2 * np.pi) * freqs * t + ph)).sum(0)


def _modal_events(sr: int, length_s: float, freqs: np.ndarray, t60s: np.ndarray, amps: np.ndarray
                  ) -> np.ndarray:
    """Like `_modal_template` but one event per row: freqs, t60s, amps [N, M] -> events [N, L]."""
    t = np.arange(max(1, int(length_s * sr)), dtype=_F32) / _F32(sr)  # [L]
    f = np.minimum(freqs.astype(_F32), _F32(0.45 * sr))[..., None]  # [N, M, 1]
    d = (6.91 / t60s.astype(_F32))[..., None]
    return (amps.astype(_F32)[..., None] * np.exp(-d * t) * np.sin(_F32(2 * np.pi) * f * t)).sum(1)


def _lfo_at(rng: np.random.Generator, times: np.ndarray, rate_hz: float, lo: float, hi: float) -> np.ndarray:
    """Smooth random curve in [lo, hi] at `times` (s): random knots every 1/rate_hz s, cosine-interpolated."""
    pos = np.maximum(times, 0.0).astype(np.float64) * rate_hz
    knots = rng.uniform(lo, hi, int(pos.max()) + 2)
    i = pos.astype(np.int64)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i))
    return (knots[i] * (1 - w) + knots[i + 1] * w).astype(_F32)


def _lfo(rng: np.random.Generator, n: int, sr: int, rate_hz: float, lo: float, hi: float) -> np.ndarray:
    """`_lfo_at` for every sample [n]: evaluated every 1 ms and held (the curve moves at rate_hz << 1 kHz)."""
    step = max(1, sr // 1000)
    return np.repeat(_lfo_at(rng, np.arange(n // step + 1) * (step / sr), rate_hz, lo, hi), step)[:n]


def _shaped_noise(rng: np.random.Generator, n: int, sr: int,
                  gain: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Noise [n] whose short-time spectrum follows gain(times [S], freqs [F]) -> [S, F] (magnitude).

    Random spectra, inverse FFT, sine window, 50 % overlap-add: the squared sine windows sum to one,
    so unit gain gives unit-variance noise with no frame-rate flutter. A time-varying filter for the
    price of one FFT, which no scipy filter offers.
    """
    nfft = 512 if sr <= 24_000 else 1024 if sr <= 48_000 else 2048
    hop = nfft // 2
    s = -(-n // hop) + 1  # frames; frame k is centred on output sample k * hop
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr).astype(_F32)  # [F]
    g = gain(np.arange(s) * (hop / sr), freqs).astype(_F32)  # [S, F]
    spec = (rng.random((s, len(freqs)), dtype=_F32) - 0.5) + 1j * (rng.random((s, len(freqs)), dtype=_F32) - 0.5)
    frames = np.fft.irfft(spec * g, nfft, axis=1).astype(_F32)  # [S, nfft]
    frames *= np.sin(np.pi * (np.arange(nfft) + 0.5) / nfft).astype(_F32) * _F32(np.sqrt(6 * nfft))
    out = np.zeros((s + 1) * hop, _F32)
    out[: s * hop] += frames[:, :hop].reshape(-1)
    out[hop:] += frames[:, hop:].reshape(-1)
    return out[hop: hop + n]


def _gate(n: int, sr: int, on_s: np.ndarray, off_s: np.ndarray, ramp_s: float = 0.01) -> np.ndarray:
    """Envelope [n] float32: 1 inside each [on, off) interval (s), linear ramps ramp_s long (shorter
    in very short clips, so the gate never vanishes)."""
    on = np.clip(np.round(np.asarray(on_s) * sr).astype(np.int64), 0, n)
    off = np.clip(np.round(np.asarray(off_s) * sr).astype(np.int64), 0, n)
    edges = np.bincount(on, minlength=n + 1)[: n + 1] - np.bincount(off, minlength=n + 1)[: n + 1]
    box = np.minimum(np.cumsum(edges)[:n], 1).astype(np.float64)
    r = max(1, min(int(ramp_s * sr), n // 4))
    c = np.cumsum(np.concatenate([np.zeros(r), box, np.zeros(r)]))
    smooth = (c[r:] - c[:-r]) / r  # centred moving average: trapezoid ramps
    return smooth[r // 2: r // 2 + n].astype(_F32)


def _cycles(freq_hz: np.ndarray, sr: int) -> np.ndarray:
    """Running phase in cycles (float64) of an instantaneous frequency [n]."""
    return np.cumsum(np.asarray(freq_hz, dtype=np.float64)) / sr


def _sin_cycles(cycles: np.ndarray, mult: float = 1.0) -> np.ndarray:
    """sin(2 pi mult cycles) in float32: wrap in float64 first so long clips keep their precision."""
    c = np.asarray(cycles, dtype=np.float64) * mult
    return np.sin(_F32(2 * np.pi) * (c - np.floor(c)).astype(_F32))


def _first_onset(rng: np.random.Generator, n: int, sr: int, within_s: float = 0.3) -> float:
    """Time (s) of a sparse class's first event, early enough that every clip holds one."""
    return float(rng.uniform(0.0, min(within_s, 0.25 * n / sr)))


def _jitter(rng: np.random.Generator, times: np.ndarray, std_s: float) -> np.ndarray:
    """Humanise event times (s) by N(0, std_s), keeping the first one (it guarantees an event) in place."""
    out = np.maximum(times + rng.normal(0.0, std_s, len(times)), 0.0)
    out[0] = times[0]
    return out


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


# ========================================================================================== renderers


def _rain(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    rate = 90.0 * p.density * rng.uniform(0.8, 1.25)  # drops per second
    noise = _white(rng, n)
    # the hiss of countless distant drops, gently swelling
    bed = _filter(noise, _biquad("highpass", 500 * ps, sr), _biquad("lowpass", 7000 * ps, sr, 0.5))
    bed_level = 0.25 * p.density ** 0.8
    bed *= bed_level * _lfo(rng, n, sr, 0.7, 0.75, 1.0)
    # drop impacts: 1-3 ms clicks of bright noise, heavy-tailed loudness
    k = 1 + rng.poisson(rate * dur)
    pos = rng.integers(0, n, k)
    ticks = _bursts(noise[::-1].copy(), pos, rng.lognormal(0.0, 0.7, k), rng.uniform(0.001, 0.003), sr)
    ticks = _filter(ticks, _biquad("highpass", 1500 * ps, sr))
    # a quarter of the drops ring as bubbles (Minnaert resonance, pitch rising as it closes)
    m = 1 + rng.poisson(0.25 * rate * dur)
    length = 0.02
    t = np.arange(int(length * sr), dtype=_F32) / _F32(sr)
    f0 = (rng.uniform(1500, 4500, m) * ps).astype(_F32)[:, None]
    rise = rng.uniform(0.5, 1.5, m).astype(_F32)[:, None]
    tau = rng.uniform(0.002, 0.007, m).astype(_F32)[:, None]
    phase = f0 * (t + rise * t * t / (2 * length))
    plinks = rng.lognormal(-1.0, 0.6, m).astype(_F32)[:, None] * np.exp(-t / tau) * np.sin(_F32(2 * np.pi) * phase)
    wave = bed + 0.5 * ticks + _place(n, rng.integers(0, n, m), plinks)
    return wave, {"drops_per_s": _r(rate, 1), "bed_level": _r(bed_level)}


def _wind(rng, n, sr, p):
    ps = p.pitch_scale
    fc0 = rng.uniform(250, 600) * ps  # centre of the howl at mean gust strength
    bw = rng.uniform(0.4, 0.8)  # spectral width in octaves (std)
    gust_hz = rng.uniform(0.25, 0.7) * (0.7 + 0.3 * p.density)
    depth = min(0.9, 0.5 + 0.2 * p.density)  # how far gusts swing
    whistle = float(rng.uniform(0.4, 1.5)) if rng.random() < 0.25 + 0.2 * p.density else 0.0
    whistle_ratio = rng.uniform(3.0, 6.0)

    def gain(times, freqs):
        g = _lfo_at(rng, times, gust_hz, 1 - depth, 1.0) ** 2  # gust strength [S]
        g = g * _lfo_at(rng, times, 4 * gust_hz, 0.75, 1.0)  # flutter within a gust
        fc = fc0 * 2 ** (1.5 * (g - 0.5))  # air speed up, pitch up [S]
        lf = np.log2(np.maximum(freqs, 1.0)[None, :] / fc[:, None])  # [S, F]
        body = np.exp(-0.5 * (lf / bw) ** 2)
        rumble = 0.5 / (1 + (freqs / 120.0) ** 2)  # buffeting below ~120 Hz
        tone = whistle * np.exp(-0.5 * ((lf - np.log2(whistle_ratio)) / 0.05) ** 2) if whistle else 0.0
        return g[:, None] * (body + rumble[None, :] + tone)

    wave = _shaped_noise(rng, n, sr, gain)
    return wave, {"gust_hz": _r(gust_hz), "centre_hz": _r(fc0, 1), "whistle": _r(whistle)}


def _thunder(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    far = p.distance == "far"
    k = int(min(4, 1 + rng.poisson(dur / 8 * p.density)))
    onsets = np.sort(np.concatenate([[_first_onset(rng, n, sr, 1.0)], rng.uniform(0, dur, k - 1)]))
    strikes = []
    for t0 in onsets:
        m = int(rng.integers(3, 9))  # rolling bumps of the rumble
        strikes.append((t0, t0 + np.concatenate([[0.0], rng.uniform(0, rng.uniform(1.0, 3.0), m - 1)]),
                        rng.lognormal(0, 0.5, m), rng.uniform(0.3, 1.2, m)))
    fc_hi, fc_lo = (400.0 if far else 1200.0) * ps, 90.0 * ps

    def gain(times, freqs):
        g = np.zeros((len(times), len(freqs)), _F32) + 0.01 / (1 + (freqs / 150.0) ** 2)  # distant floor
        tilt = np.sqrt(100.0 / (freqs + 100.0)) * freqs / (freqs + 25.0)  # low-heavy, no DC
        for t0, bump_t, bump_a, bump_tau in strikes:
            x = np.maximum(times[:, None] - bump_t[None, :], 0.0)  # [S, m]
            env = (bump_a * (1 - np.exp(-x / 0.08)) * np.exp(-x / bump_tau)).sum(1)  # [S]
            fc = fc_lo + (fc_hi - fc_lo) * np.exp(-np.maximum(times - t0, 0.0) / 0.7)  # darkens as it rolls
            g += env[:, None] * tilt[None, :] / (1 + (freqs[None, :] / fc[:, None]) ** 3)
        return g

    wave = _shaped_noise(rng, n, sr, gain)
    crack = 0.0
    if not far:  # the close crack: a bright ripping burst at each onset
        crack = float(rng.uniform(0.15, 0.5))  # its energy relative to the rumble's
        pos = (onsets + rng.uniform(0, 0.06, (3, k))).ravel() * sr
        burst = _filter(_bursts(_white(rng, n), pos, rng.uniform(0.5, 1.0, 3 * k), 0.05, sr),
                        _biquad("highpass", 900 * ps, sr))
        wave += np.sqrt(crack * np.mean(wave ** 2) / (np.mean(burst ** 2) + 1e-12)) * burst
    return wave, {"strikes": k, "first_onset_s": _r(onsets[0]), "crack": _r(crack)}


def _ocean_waves(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    period = rng.uniform(3.5, 7.0) / p.density ** 0.3  # seconds between breakers
    first = rng.uniform(0.3, 0.7) * min(period, dur)  # a crash inside every clip
    k = int(dur / period) + 3
    crashes = first + period * (np.arange(-1, k - 1) + rng.uniform(-0.1, 0.1, k))
    rise = rng.uniform(0.4, 0.7) * period  # the swell builds up...
    roar_tau, foam_tau = rng.uniform(0.4, 0.9), rng.uniform(0.7, 1.5)  # ...breaks, and washes out

    def gain(times, freqs):
        x = times[:, None] - crashes[None, :]  # time since each crash [S, W]
        swell = np.where(x < 0, np.clip(1 + x / rise, 0, 1) ** 3, np.exp(-x / roar_tau)).max(1)
        foam = np.where(x < 0, np.clip(1 + x / 1.0, 0, 1) ** 3 * 0.6, np.exp(-x / foam_tau)).max(1)
        roar = 1 / (1 + (freqs / (600 * ps)) ** 2) * freqs / (freqs + 60)  # deep body of the breaker
        hiss = np.exp(-0.5 * (np.log2(np.maximum(freqs, 1) / (2000 * ps)) / 1.2) ** 2)  # foam and wash
        return (0.03 + swell)[:, None] * roar[None, :] + (0.01 + foam)[:, None] * 0.7 * hiss[None, :]

    wave = _shaped_noise(rng, n, sr, gain)
    return wave, {"period_s": _r(period), "first_crash_s": _r(first)}


def _flowing_water(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    rate = 60.0 * p.density * rng.uniform(0.8, 1.25)  # bubbles per second
    bed = _filter(_white(rng, n), _biquad("bandpass", rng.uniform(500, 1000) * ps, sr, 0.5))
    bed *= _lfo(rng, n, sr, 9.0, 0.5, 1.0) * _F32(0.12)  # turbulent flicker
    m = 1 + rng.poisson(rate * dur)
    length = 0.04
    t = np.arange(int(length * sr), dtype=_F32) / _F32(sr)
    f0 = (np.exp(rng.uniform(np.log(300), np.log(1500), m)) * ps).astype(_F32)[:, None]
    rise = rng.uniform(0.4, 1.5, m).astype(_F32)[:, None]  # Minnaert pitch rises as the bubble closes
    tau = rng.uniform(0.005, 0.012, m).astype(_F32)[:, None]
    phase = f0 * (t + rise * t * t / (2 * length))
    blips = rng.lognormal(0.0, 0.6, m).astype(_F32)[:, None] * np.exp(-t / tau) * np.sin(_F32(2 * np.pi) * phase)
    wave = bed + _place(n, rng.integers(0, n, m), blips)
    return wave, {"bubbles_per_s": _r(rate, 1)}


def _fire_crackling(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    noise = _white(rng, n)
    roar = _filter(noise, _biquad("lowpass", 350 * ps, sr), _biquad("lowpass", 350 * ps, sr))
    roar *= _lfo(rng, n, sr, 4.0, 0.4, 1.0) * 0.6 * p.density ** 0.5  # flicker of the flames
    rate = 12.0 * p.density * rng.uniform(0.7, 1.4)  # crackle clusters per second
    k = 1 + rng.poisson(rate * dur)
    sub = rng.integers(1, 6, k)  # each cluster: a few clicks within ~20 ms
    centre = np.repeat(rng.uniform(0, dur, k), sub)
    pos = (centre + rng.exponential(0.006, len(centre))) * sr
    amps = np.repeat(rng.pareto(2.5, k) + 0.3, sub) * rng.choice([-1.0, 1.0], len(centre))
    clicks = _decay(_impulses(n, pos, amps), 0.0004, sr) + _bursts(noise[::-1].copy(), pos, np.abs(amps), 0.002, sr)
    clicks = _filter(clicks, _biquad("highpass", 900 * ps, sr), _biquad("lowpass", 6000 * ps, sr))
    j = 1 + rng.poisson(0.15 * rate * dur)  # woody pops: lower, longer bursts
    pops = _filter(_bursts(noise, rng.uniform(0, dur, j) * sr, rng.uniform(0.5, 1.5, j), 0.008, sr),
                   _biquad("bandpass", 700 * ps, sr, 1.0))
    wave = roar + 1.2 * clicks + 0.8 * pops
    return wave, {"crackles_per_s": _r(rate, 1)}


def _engine(rng, n, sr, p):
    ps = p.pitch_scale
    cyl = int(rng.choice([4, 6, 8]))
    rpm0 = 1500.0 * ps ** 2 * rng.uniform(0.85, 1.15)  # idle-ish (low) to revving (high)
    t = np.arange(n) / sr
    rev = rng.random() < 0.3
    if rev:  # a rev: up and back down once
        t_peak, width = rng.uniform(0.3, 0.7) * n / sr, rng.uniform(0.4, 1.0)
        rpm = rpm0 * (1 + rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((t - t_peak) / width) ** 2))
    else:
        rpm = rpm0 * _lfo(rng, n, sr, 0.5, 0.96, 1.04)
    fire = rpm / 60.0 * cyl / 2  # four-stroke: every cylinder fires once per two revolutions
    cyc = _cycles(fire, sr)
    k = np.floor(cyc).astype(np.int64)
    frac = (cyc - k).astype(_F32)
    cyl_gain = rng.uniform(0.7, 1.3, cyl).astype(_F32)[k % cyl]  # uneven cylinders: the lope
    pulse = cyl_gain * np.exp(-frac * _F32(rng.uniform(4, 9)))  # combustion pressure pulses
    pulse -= pulse.mean()
    load = 0.5 * p.density
    body = _filter(pulse, _resonator(rng.uniform(60, 140) * ps, 60, sr),
                   _biquad("lowpass", (500 + 700 * load) * ps, sr))
    mech = _filter(_white(rng, n), _biquad("bandpass", rng.uniform(1000, 2500) * ps, sr, 0.8))
    mech *= 0.04 * (0.5 + load) * (1.0 + pulse / (np.abs(pulse).max() + 1e-9))  # valve/intake noise, firing-locked
    wave = body / (np.abs(body).max() + 1e-9) + mech
    return wave, {"rpm": _r(rpm0, 0), "cylinders": cyl, "firing_hz": _r(rpm0 / 60 * cyl / 2, 1), "rev": bool(rev)}


def _car_horn(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    f1 = rng.uniform(370, 460) * ps
    two_tone = rng.random() < 0.7
    f2 = f1 * (2 ** (rng.choice([3, 4]) / 12)) if two_tone else 0.0
    # honk pattern: one long blast, or short toots; repeated
    if rng.random() < 0.5:
        lens = [rng.uniform(0.5, 1.4)]
    else:
        lens = list(rng.uniform(0.12, 0.3, int(rng.integers(2, 4))))
    on, off, t = [], [], _first_onset(rng, n, sr)
    while t < dur:
        for ln in lens:
            on.append(t)
            off.append(t + ln)
            t += ln + rng.uniform(0.08, 0.18)
        t += rng.uniform(1.0, 2.5) / p.density ** 0.5
    env = _gate(n, sr, np.array(on), np.array(off), 0.015)
    idx = np.flatnonzero(env)
    tt = idx / sr
    wave = np.zeros(n, _F32)
    tone = np.zeros(len(idx), _F32)
    for f in [f1, f2] if two_tone else [f1]:
        # the diaphragm buzz: FM with index 2.5 (modulator = carrier), soft-clipped into a reedy square
        fm = f * tt + (2.5 / (2 * np.pi)) * _sin_cycles(f * tt)  # phase in cycles
        tone += np.tanh(_F32(2.0) * _sin_cycles(fm))
    wave[idx] = tone * env[idx]
    wave = _filter(wave, _biquad("highpass", 250 * ps, sr), _resonator(rng.uniform(1800, 2800), 900, sr))
    return wave, {"f1_hz": _r(f1, 1), "f2_hz": _r(f2, 1), "honks": len(on)}


def _siren(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    t = np.arange(n) / sr
    kind = str(rng.choice(["wail", "yelp", "hi-lo"]))
    f_lo = rng.uniform(550, 750) * ps
    if kind == "wail":
        period = rng.uniform(2.5, 5.0)
        f_hi = f_lo * rng.uniform(1.8, 2.3)
        x = 0.5 - 0.5 * np.cos(2 * np.pi * (t / period + rng.uniform()))
        freq = f_lo + (f_hi - f_lo) * x
    elif kind == "yelp":
        period = rng.uniform(0.15, 0.35)
        f_hi = f_lo * rng.uniform(1.8, 2.3)
        x = (t / period + rng.uniform()) % 1.0
        freq = f_lo + (f_hi - f_lo) * np.sqrt(x)  # quick rise, snap back
    else:
        period = rng.uniform(0.8, 1.4)  # one high + one low tone
        f_hi = f_lo * rng.uniform(1.25, 1.4)
        x = (t / period + rng.uniform()) % 1.0
        freq = np.where(x < 0.5, f_hi, f_lo)
        freq = lfilter([0.02], [1, -0.98], freq, zi=[0.98 * freq[0]])[0]  # a few ms of glide at each switch
    passing = rng.random() < 0.3
    if passing:  # Doppler: pitch falls as the vehicle passes
        t_pass = rng.uniform(0.3, 0.7) * dur
        freq = freq * (1 + 0.06 * np.tanh(-(t - t_pass) / 0.6))
    cyc = _cycles(freq, sr)
    wave = _sin_cycles(cyc) + 0.35 * _sin_cycles(cyc, 3.0) + 0.15 * _sin_cycles(cyc, 5.0)  # square-ish horn
    if passing:
        wave *= (1 / (1 + ((t - t_pass) / 1.5) ** 2)).astype(_F32) + 0.15
    return wave.astype(_F32), {"type": kind, "f_low_hz": _r(f_lo, 1), "f_high_hz": _r(f_hi, 1),
                               "period_s": _r(period), "doppler": bool(passing)}


def _alarm(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    f = min(rng.uniform(1600, 2600) * ps, 0.4 * sr)
    kind = str(rng.choice(["continuous", "triple", "double"]))
    start = _first_onset(rng, n, sr, 0.15)
    if kind == "continuous":
        rate = rng.uniform(2.0, 5.0) * (0.7 + 0.3 * p.density)
        on = start + np.arange(0, dur * rate + 1) / rate
        off = on + 0.5 / rate
    else:
        beeps = 3 if kind == "triple" else 2
        beep, gap, pause = rng.uniform(0.08, 0.3), rng.uniform(0.06, 0.15), rng.uniform(0.4, 1.2)
        cycle = beeps * (beep + gap) + pause
        base = start + np.arange(0, dur / cycle + 1) * cycle
        on = (base[:, None] + np.arange(beeps)[None, :] * (beep + gap)).ravel()
        off = on + beep
    env = _gate(n, sr, on, off, 0.004)
    idx = np.flatnonzero(env)
    ph = _sin_cycles(f * idx / sr)
    wave = np.zeros(n, _F32)
    square_ish = ph + _F32(0.3) * _sin_cycles(3 * f * idx / sr) * (3 * f < 0.45 * sr)
    wave[idx] = env[idx] * square_ish
    return wave, {"type": kind, "freq_hz": _r(f, 1), "beeps_per_s": _r(len(on) / max(dur, 1e-3), 2)}


def _phone_ringing(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    kind = str(rng.choice(["bell", "electronic"]))
    cadence = [rng.uniform(1.5, 2.0), rng.uniform(2.0, 4.0)] if rng.random() < 0.5 else [0.4, 0.2, 0.4, 2.0]
    on, off, t = [], [], _first_onset(rng, n, sr, 0.2)
    while t < dur:
        for i in range(0, len(cadence), 2):
            on.append(t)
            off.append(t + cadence[i])
            t += cadence[i] + cadence[i + 1]
    on, off = np.array(on), np.array(off)
    if kind == "bell":  # clapper hammering two small bells, 18-25 strikes a second
        rate = rng.uniform(18, 25)
        f1 = rng.uniform(900, 1300) * ps ** 0.7
        strikes = np.concatenate([np.arange(a, b, 1 / rate) for a, b in zip(on, off)])
        wave = np.zeros(n, _F32)
        for j, f in enumerate([f1, f1 * rng.uniform(1.12, 1.25)]):
            tmpl = _modal_template(sr, 0.5, f * np.array([1.0, 2.32, 4.25, 6.63]), [0.45, 0.3, 0.15, 0.08],
                                   [1.0, 0.6, 0.4, 0.2])
            s = strikes[j::2]
            wave += _place(n, (s * sr).astype(np.int64), tmpl * rng.uniform(0.8, 1.0))
        details = {"strikes_per_s": _r(rate, 1), "f_hz": _r(f1, 1)}
    else:  # electronic trill: two tones alternating 12-20 times a second
        env = _gate(n, sr, on, off, 0.01)
        idx = np.flatnonzero(env)
        f1 = min(rng.uniform(800, 1200) * ps, 0.35 * sr)
        f2 = f1 * rng.uniform(1.15, 1.35)
        trill = rng.uniform(12, 20)
        freq = np.where((idx / sr * trill) % 1.0 < 0.5, f1, f2)
        cyc = _cycles(freq, sr)
        wave = np.zeros(n, _F32)
        wave[idx] = env[idx] * (_sin_cycles(cyc) + 0.25 * _sin_cycles(cyc, 3.0) * (3 * f2 < 0.45 * sr))
        details = {"trill_hz": _r(trill, 1), "f_hz": _r(f1, 1)}
    return wave, {"type": kind, **details, "rings": len(on)}


_BELL_TYPES = {  # partial ratios, t60 of the lowest partial (s), shortening upwards
    "church": ([0.5, 1.0, 1.19, 1.5, 2.0, 2.51, 2.66, 3.01], 4.0, 220.0),
    "chime": ([1.0, 2.76, 5.40, 8.93], 2.5, 700.0),  # free bar / tubular chime
    "handbell": ([1.0, 2.0, 2.99, 4.17, 5.43], 1.5, 900.0),
}


def _bell(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    kind = str(rng.choice(list(_BELL_TYPES)))
    ratios, t60, base = _BELL_TYPES[kind]
    f0 = base * ps * rng.uniform(0.85, 1.15)
    interval = rng.uniform(0.8, 2.0) / p.density ** 0.5
    strikes = _jitter(rng, _first_onset(rng, n, sr, 0.2) + np.arange(0, dur / interval + 1) * interval, 0.02)
    # chimes hit one of a few tuned tubes (pentatonic), bells repeat one note
    notes = rng.choice([0, 2, 4, 7, 9], 3, replace=False) if kind == "chime" else [0]
    which = rng.integers(0, len(notes), len(strikes))
    ratios = np.array(ratios)
    t60s = t60 / (1 + 0.6 * (ratios - ratios[0]) / ratios[0])  # higher partials die sooner
    amps = rng.uniform(0.4, 1.0, len(ratios)) / ratios ** 0.3
    wave = np.zeros(n, _F32)
    length = min(dur, t60 * 0.8)
    for j, semis in enumerate(notes):
        s = strikes[which == j]
        if len(s):
            tmpl = _modal_template(sr, length, f0 * 2 ** (semis / 12) * ratios, t60s, amps)
            wave += _place(n, s * sr, tmpl)
    return wave, {"type": kind, "f0_hz": _r(f0, 1), "interval_s": _r(interval), "strikes": int(len(strikes))}


def _clock_ticking(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    period = float(rng.choice([1.0, 0.5, 0.25, 0.2]))  # wall clock, mantel clock, small clocks
    start = rng.uniform(0, min(period, 0.25 * dur))
    ticks = _jitter(rng, start + np.arange(0, dur / period + 1) * period, 0.002)  # escapement jitter
    wave = np.zeros(n, _F32)
    for j in range(2):  # tick and tock: two escapement impacts with different ring
        modes = rng.uniform(1800, 5000, 3) * ps ** 0.7
        tmpl = _modal_template(sr, 0.05, np.append(modes, rng.uniform(400, 800) * ps), rng.uniform(0.01, 0.04, 4),
                               [1.0, 0.7, 0.5, 0.6])
        tmpl[: int(0.001 * sr)] += _white(rng, int(0.001 * sr)) * 0.8  # the click of the pallet
        wave += _place(n, (ticks[j::2] * sr).astype(np.int64), tmpl * (1.0 if j == 0 else rng.uniform(0.6, 0.9)))
    return wave, {"tick_period_s": period}


def _footsteps(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    surface = str(rng.choice(["wood", "hard", "gravel"]))
    running = rng.random() < 0.2 * p.density
    rate = rng.uniform(2.8, 3.4) if running else rng.uniform(1.5, 2.2)  # steps per second
    steps = _jitter(rng, _first_onset(rng, n, sr, 0.25) + np.arange(0, dur * rate + 1) / rate, 0.012)
    amp = np.where(np.arange(len(steps)) % 2 == 0, 1.0, 0.8) * rng.uniform(0.8, 1.0, len(steps))
    toes = steps + rng.uniform(0.05, 0.11)  # the roll from heel to toe
    noise = _white(rng, n)
    weight = 0.5 + 0.5 * p.density  # heavier steps, more low thump
    thump = _modal_template(sr, 0.15, np.array([rng.uniform(60, 110), rng.uniform(150, 250)]) * ps,
                            [0.1, 0.06], [1.0, 0.5])
    wave = weight * _place(n, (steps * sr).astype(np.int64), np.outer(amp, thump))
    if surface == "gravel":  # a crunch: dozens of tiny stone clicks spread over ~150 ms
        m = 50
        pos = (np.repeat(steps, m) + rng.gamma(2.0, 0.03, (len(steps) * m))) * sr
        grains = _bursts(noise, pos, np.repeat(amp, m) * rng.uniform(0.2, 1.0, len(pos)), 0.0015, sr)
        wave += 1.5 * _filter(grains, _biquad("bandpass", 2500 * ps, sr, 0.6))
    else:  # heel and toe impacts: a noise burst plus, on hard floors, the ring of a heel tap
        pos = np.concatenate([steps, toes]) * sr
        amps = np.concatenate([amp, 0.4 * amp])
        tau = 0.012 if surface == "wood" else 0.006
        centre = (600 if surface == "wood" else 2200) * ps
        wave += 1.5 * _filter(_bursts(noise, pos, amps, tau, sr), _biquad("bandpass", centre, sr, 0.8))
        if surface == "hard":
            tap = _modal_template(sr, 0.06, rng.uniform(1500, 3500, 2) * ps, [0.04, 0.03], [0.5, 0.3])
            wave += _place(n, (steps * sr).astype(np.int64), np.outer(amp, tap))
    return wave, {"surface": surface, "steps_per_s": _r(rate, 2), "running": bool(running)}


def _knocking(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    per_group = int(rng.integers(2, 4) + (rng.integers(0, 3) if p.intensity == "heavy" else 0))
    spacing = rng.uniform(0.12, 0.24) / p.density ** 0.2
    gap = rng.uniform(0.8, 2.0)
    t, knocks = _first_onset(rng, n, sr, 0.2), []
    while t < dur:
        knocks.extend(t + np.arange(per_group) * spacing * rng.uniform(0.95, 1.05, per_group))
        t += per_group * spacing + gap
    knocks = np.array(knocks)
    # a wooden door: a handful of low plate modes, knuckle click on top
    modes = np.array([rng.uniform(90, 130), rng.uniform(170, 230), rng.uniform(260, 340),
                      rng.uniform(420, 560), rng.uniform(700, 1000), rng.uniform(1200, 1800)]) * ps
    tmpl = _modal_template(sr, 0.25, modes, [0.15, 0.12, 0.09, 0.07, 0.05, 0.03],
                           [1.0, 0.9, 0.7, 0.5, 0.35, 0.2], phase=rng.uniform(0, 2 * np.pi, 6))
    click = _white(rng, int(0.003 * sr)) * np.exp(-np.arange(int(0.003 * sr)) / (0.0008 * sr)).astype(_F32)
    tmpl[: len(click)] += 0.8 * click
    amps = rng.uniform(0.75, 1.0, len(knocks)) * (0.6 + 0.4 * min(p.density, 1.5))
    wave = _place(n, (knocks * sr).astype(np.int64), np.outer(amps, tmpl))
    return wave, {"knocks_per_group": per_group, "spacing_s": _r(spacing), "knocks": int(len(knocks))}


def _birds(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    n_birds = {"light": 1, "moderate": int(rng.integers(1, 3)), "heavy": int(rng.integers(2, 5))}[p.intensity]
    wave = np.zeros(n, _F32)
    kinds = []
    for b in range(n_birds):
        kind = str(rng.choice(["chirp", "trill", "warble"]))
        kinds.append(kind)
        fb = min(rng.uniform(2500, 4200) * ps ** 0.7, 0.32 * sr)
        freq, amp = np.zeros(n), np.zeros(n, _F32)
        t = _first_onset(rng, n, sr, 0.3) if b == 0 else rng.uniform(0, 0.6 * dur)
        while t < dur:
            plen = rng.uniform(0.4, 1.4)
            if kind != "warble":  # repeated sweeps: slow separate chirps, or a rapid trill
                syl = rng.uniform(0.04, 0.1) if kind == "chirp" else rng.uniform(0.018, 0.04)
                per = syl + (rng.uniform(0.04, 0.15) if kind == "chirp" else 0.3 * syl)
                plen = per * max(1, round(plen / per))  # whole syllables only
            s, e = int(t * sr), min(n, int((t + plen) * sr))
            tau = np.arange(e - s) / sr
            if kind == "warble":  # continuous song with fast vibrato and a slow glide
                vib = rng.uniform(15, 35)
                f = fb * (1 + 0.12 * np.sin(2 * np.pi * vib * tau)) * (1 + rng.uniform(-0.2, 0.2) * tau / plen)
                a = np.sin(np.pi * tau / plen) ** 0.5 * (0.6 + 0.4 * np.sin(2 * np.pi * vib / 2 * tau) ** 2)
            else:
                x = (tau % per) / syl
                up = rng.random() < 0.3
                fa, fz = fb * rng.uniform(1.15, 1.5), fb * rng.uniform(0.6, 0.9)
                f = np.where(up, fz + (fa - fz) * x, fa + (fz - fa) * x)
                a = np.where(x < 1, np.sin(np.pi * np.minimum(x, 1)) ** 2, 0.0)
            freq[s:e] = np.minimum(f, 0.42 * sr)
            edges = np.minimum(1.0, np.minimum(tau / 0.005, (plen - tau) / 0.01).clip(0))  # no clicks
            amp[s:e] = a * edges * rng.uniform(0.6, 1.0)
            t += plen + rng.uniform(0.3, 1.5) / p.density ** 0.5
        cyc = _cycles(freq, sr)
        h2 = (0.12 * np.clip((0.45 * sr - 2 * freq) / (0.05 * sr), 0, 1)).astype(_F32)  # 2nd harmonic, fading
        # out (not switching off, which clicks) as it nears Nyquist
        wave += amp * (_sin_cycles(cyc) + h2 * _sin_cycles(cyc, 2.0)) * rng.uniform(0.5, 1.0)
    return wave, {"birds": n_birds, "song": kinds}


def _crickets(rng, n, sr, p):
    ps = p.pitch_scale
    count = {"light": 1, "moderate": int(rng.integers(2, 4)), "heavy": int(rng.integers(4, 7))}[p.intensity]
    t = np.arange(n) / sr
    wave = np.zeros(n, _F32)
    trill = rng.random() < 0.3  # tree crickets trill continuously; field crickets chirp
    fc0 = min(4300 * ps ** 0.7, 0.4 * sr)
    for i in range(count):
        fc = fc0 * rng.uniform(0.93, 1.07)
        pulse_hz = rng.uniform(40, 60) if trill else rng.uniform(25, 40)
        cyc = (t + rng.uniform(0, 5)) * pulse_hz  # wing strokes
        k = np.floor(cyc)
        x = (cyc - k).astype(_F32)
        env = np.sin(_F32(np.pi / 0.6) * np.minimum(x, _F32(0.6))) ** 2  # one stroke: 60 % of the period
        if not trill:  # chirps of 3-6 strokes, 1-3 chirps a second, cut between strokes (no clicks)
            period = max(int(round(pulse_hz / rng.uniform(1.2, 3.0))), 7)
            env *= (k.astype(np.int64) % period < rng.integers(3, 7)).astype(_F32)
        level = 1.0 if i == 0 else rng.uniform(0.2, 0.8)  # a chorus: others further off
        wave += _F32(level) * env * _sin_cycles(fc * t)
    return wave, {"crickets": count, "carrier_hz": _r(fc0, 1), "trill": bool(trill)}


def _applause(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    people = int({"light": rng.integers(4, 9), "moderate": rng.integers(12, 26),
                  "heavy": rng.integers(35, 71)}[p.intensity])
    rate = rng.uniform(3.0, 5.5, people)  # claps per second per person
    count = int(dur * 5.6) + 2
    times = rng.uniform(-0.3, 0.0, people)[:, None] + np.arange(count)[None, :] / rate[:, None]
    times += rng.normal(0, 0.012, times.shape)  # [P, K]
    loud = rng.lognormal(0, 0.5, people)[:, None] * rng.uniform(0.7, 1.0, times.shape)
    if rng.random() < 0.5:  # applause starting: people join in over the first second
        loud *= times >= rng.uniform(0, min(1.0, 0.3 * dur), people)[:, None]
    if rng.random() < 0.3:  # and dying away at the end
        loud *= times <= rng.uniform(0.6, 1.0, people)[:, None] * dur
    group = rng.integers(0, 3, people)
    noise = _white(rng, n)
    wave = np.zeros(n, _F32)
    for g, (fc, tau) in enumerate([(900, 0.006), (1500, 0.004), (2300, 0.003)]):  # hand shapes
        sel = group == g
        if sel.any():
            claps = _bursts(noise, times[sel].ravel() * sr, loud[sel].ravel(), tau, sr)
            wave += _filter(claps, _biquad("bandpass", fc * ps * rng.uniform(0.9, 1.1), sr, 1.0))
    if not np.any(wave):  # everyone joined after the clip ended (very short clips): one clap
        wave = _filter(_bursts(noise, [0], [1.0], 0.005, sr), _biquad("bandpass", 1500 * ps, sr, 1.0))
    return wave, {"people": people, "claps_per_s": _r(rate.mean(), 2)}


def _dog_barking(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    f0 = 320.0 * ps ** 2 * rng.uniform(0.85, 1.15)  # big dog ~160 Hz, small dog ~600 Hz
    size = ps ** 0.6  # formants scale with the vocal tract
    formants = [(rng.uniform(500, 750) * size, 150), (rng.uniform(1100, 1600) * size, 200),
                (rng.uniform(2300, 3000) * size, 300), (rng.uniform(3500, 4300) * size, 400)]
    bark_s = rng.uniform(0.11, 0.2) / ps ** 0.3
    per_group = int(rng.integers(1, 4) + (1 if p.intensity == "heavy" else 0))
    spacing, gap = rng.uniform(0.22, 0.4), rng.uniform(0.6, 1.8) / p.density ** 0.3
    rough = 0.15 + 0.25 * (p.density > 1)
    onsets, t = [], _first_onset(rng, n, sr, 0.2)
    while t < dur:
        onsets.extend(t + np.arange(per_group) * spacing)
        t += per_group * spacing + gap
    wave = np.zeros(n, _F32)
    tail = int(0.03 * sr)  # let the formant filters ring out after the source stops
    for t0 in onsets:
        s = int(t0 * sr)
        length = min(int(bark_s * rng.uniform(0.85, 1.15) * sr), n - s)
        if length <= 0:
            continue
        tau = np.arange(length) / sr
        x = tau / (length / sr)
        peak = rng.uniform(0.15, 0.3)  # pitch jumps up fast, then falls through the bark
        contour = f0 * rng.uniform(0.9, 1.1) * np.interp(x, [0, peak, 1], [0.8, rng.uniform(1.2, 1.5), 0.65])
        cyc = _cycles(contour, sr)
        pulses = np.diff(np.floor(cyc), prepend=0.0).astype(_F32)  # one glottal pulse per period
        env = (1 - np.exp(-tau / 0.005)) * np.exp(-np.maximum(tau - 0.12 * bark_s, 0) / (0.3 * bark_s))
        env = (env * np.minimum(1.0, (length / sr - tau) / 0.02)).astype(_F32)  # fade out: no click
        src = _decay(pulses, 0.3 / (2 * np.pi * f0), sr) * (1 + rough * np.sin(np.pi * cyc)).astype(_F32)  # growl
        src = src * env + rough * 0.5 * _white(rng, length) * env  # rasp / breath
        src = np.concatenate([src, np.zeros(min(tail, n - s - length), _F32)])
        sections = [_resonator(f * rng.uniform(0.9, 1.1), bw, sr) for f, bw in formants]
        y = _filter(src, *sections, _biquad("highpass", 0.6 * f0, sr))
        wave[s: s + len(y)] += y * rng.uniform(0.7, 1.0)
    return wave, {"f0_hz": _r(f0, 1), "barks": len(onsets), "barks_per_group": per_group}


def _glass_breaking(rng, n, sr, p):
    dur, ps = n / sr, p.pitch_scale
    crashes = [_first_onset(rng, n, sr, 0.3)]
    if dur > 3.0:  # now and then another pane (one every ~15 s at moderate intensity)
        more = rng.poisson((dur - 3.0) / 15.0 * p.density)
        crashes.extend(np.sort(rng.uniform(crashes[0] + 1.5, dur, more)))
    noise = _white(rng, n)
    wave = np.zeros(n, _F32)
    shards_total = 0
    for c in crashes:
        # the impact: a bright double noise burst (hit, then the pane giving way)
        impact = _bursts(noise, [c * sr, (c + 0.01) * sr], [1.0, 0.6], rng.uniform(0.02, 0.05), sr)
        wave += 1.5 * _filter(impact, _biquad("highpass", 1500 * ps ** 0.5, sr))
        # shards: many small, stiff plates ringing high, mostly right after impact, a few bouncing later
        m = int(rng.integers(40, 90) * p.density ** 0.5)
        shards_total += m
        dt = np.where(rng.random(m) < 0.8, rng.exponential(0.15, m), rng.uniform(0.2, 1.5, m))
        freqs = rng.uniform(2500, 7500, (m, 2)) * ps ** 0.5
        t60s = rng.uniform(0.03, 0.12, (m, 2))
        amps = (rng.lognormal(0, 0.5, (m, 1)) * np.exp(-dt / 0.6)[:, None]) * np.array([[1.0, 0.6]])
        wave += _place(n, ((c + dt) * sr).astype(np.int64), _modal_events(sr, 0.12, freqs, t60s, amps))
        tinkle = _bursts(noise[::-1].copy(), (c + dt) * sr, amps[:, 0], 0.002, sr)
        wave += _filter(tinkle, _biquad("highpass", 3000 * ps ** 0.5, sr))
    return wave, {"crashes": len(crashes), "shards": shards_total}


RENDERERS: dict[str, Renderer] = {
    "rain": _rain, "wind": _wind, "thunder": _thunder, "ocean waves": _ocean_waves,
    "flowing water": _flowing_water, "fire crackling": _fire_crackling, "engine": _engine,
    "car horn": _car_horn, "siren": _siren, "alarm": _alarm, "phone ringing": _phone_ringing,
    "bell": _bell, "clock ticking": _clock_ticking, "footsteps": _footsteps, "knocking": _knocking,
    "birds": _birds, "crickets": _crickets, "applause": _applause, "dog barking": _dog_barking,
    "glass breaking": _glass_breaking,
}
assert tuple(RENDERERS) == SFX_CLASSES


# ============================================================================================ public


def render_sfx(rng: np.random.Generator, duration_s: float, sample_rate: int) -> tuple[np.ndarray, dict]:
    """One random SFX clip: a class drawn uniformly, random intensity/pitch/distance, a background
    class in MIX_PROBABILITY of the clips. Returns (wave [T] float32, labels)."""
    name = SFX_CLASSES[int(rng.integers(len(SFX_CLASSES)))]
    background = None
    if rng.random() < MIX_PROBABILITY:
        others = [c for c in SFX_CLASSES if c != name]
        background = others[int(rng.integers(len(others)))]
    return render_sfx_class(name, rng, duration_s, sample_rate, background=background)


def render_sfx_class(
    name: str,
    rng: np.random.Generator,
    duration_s: float,
    sample_rate: int,
    *,
    intensity: str | None = None,
    pitch: str | None = None,
    distance: str | None = None,
    background: str | None = None,
    background_db: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Render class `name`, optionally over a `background` class. Returns (wave [T] float32, labels).

    Args:
        name: one of SFX_CLASSES.
        rng: the only source of randomness.
        duration_s: clip length; T = round(duration_s * sample_rate) samples.
        sample_rate: in Hz, at least MIN_SAMPLE_RATE.
        intensity, pitch, distance: one of INTENSITIES / PITCHES / DISTANCES; None draws one from rng.
        background: a second class mixed underneath ("name while background"); None (default): no mix.
        background_db: its level relative to the foreground (active RMS); None draws from [-15, -6] dB.
    """
    # 1. check inputs
    sr = check_sample_rate(sample_rate)
    if sr < MIN_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be at least {MIN_SAMPLE_RATE} Hz for sfx, got {sr}")
    if not np.isfinite(duration_s) or round(duration_s * sr) < 1:
        raise ValueError(f"duration_s must be positive (at least one sample), got {duration_s}")
    n = int(round(duration_s * sr))
    for what, value, allowed in (("sfx class", name, SFX_CLASSES), ("background", background, SFX_CLASSES),
                                 ("intensity", intensity, INTENSITIES), ("pitch", pitch, PITCHES),
                                 ("distance", distance, DISTANCES)):
        if value is not None and value not in allowed:
            raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    if background == name:
        raise ValueError(f"background must differ from the foreground class, got {name!r} twice")
    # 2. clip-level choices
    intensity = intensity or INTENSITIES[int(rng.integers(len(INTENSITIES)))]
    pitch = pitch or PITCHES[int(rng.integers(len(PITCHES)))]
    distance = distance or DISTANCES[int(rng.integers(len(DISTANCES)))]
    params = SfxParams(intensity, pitch, distance,
                       density=_DENSITY[intensity] * float(rng.uniform(0.85, 1.15)),
                       pitch_scale=_PITCH_SCALE[pitch] * float(rng.uniform(0.93, 1.07)))
    # 3. render each class, apply distance (far sources lose their highs to the air; synth.py adds
    #    the room), then match levels, so a far high-pitched foreground is not buried by its background
    cutoff = float(rng.uniform(1500, 3000)) if distance == "far" else None

    def render(cls: str) -> tuple[np.ndarray, dict]:
        w, d = RENDERERS[cls](rng, n, sr, params)
        if cutoff is not None:
            w = _filter(w.astype(np.float64), _biquad("lowpass", cutoff, sr), _biquad("lowpass", cutoff, sr))
        return w / _active_rms(w), d

    wave, fg_details = render(name)
    details = {name: fg_details}
    if background is not None:
        level_db = float(rng.uniform(*_BACKGROUND_DB)) if background_db is None else float(background_db)
        bg, bg_details = render(background)
        wave = wave + bg * 10 ** (level_db / 20)
        details[background] = {**bg_details, "level_db": _r(level_db, 2)}
    if cutoff is not None:
        details["far_lowpass_hz"] = _r(cutoff, 1)
    wave = _normalize(wave, _TARGET_RMS[intensity] * (_FAR_GAIN if distance == "far" else 1.0))
    classes = [name] if background is None else [name, background]
    labels = {"domain": "sfx", "classes": classes, "intensity": intensity, "pitch": pitch,
              "distance": distance, "details": details}
    return wave, labels


# ========================================================================================== levels


def _active_rms(x: np.ndarray) -> float:
    """RMS over the frames that hold sound (energy within 20 dB of the loudest 32 ms frame), so a
    sparse class (a few knocks) and a dense one (rain) end up equally loud while they sound."""
    x = np.asarray(x, dtype=np.float64)
    frame = 512
    m = -(-len(x) // frame)
    e = (np.concatenate([x, np.zeros(m * frame - len(x))]).reshape(m, frame) ** 2).mean(1)  # [frames]
    rms = float(np.sqrt(e[e >= 0.01 * e.max()].mean())) if e.max() > 0 else 0.0
    assert rms > 0 and np.isfinite(rms), "a renderer returned silence"
    return rms


def _normalize(wave: np.ndarray, target_rms: float) -> np.ndarray:
    """Active RMS -> target_rms, then peak <= 0.99; if a spiky clip ends up too quiet, soft-limit it."""
    wave = np.nan_to_num(wave.astype(np.float64)) * (target_rms / _active_rms(wave))
    peak = float(np.abs(wave).max())
    if peak > 0.99:
        wave *= 0.99 / peak
    if np.sqrt(np.mean(wave ** 2)) < 2e-3:  # crest factor too high for the peak cap: compress
        wave = np.tanh(4.0 * wave / np.abs(wave).max()) * (0.99 / np.tanh(4.0))
    return wave.astype(_F32)
