"""Waveform + log-mel spectrogram of a clip as a PNG (matplotlib), drawn once per generated clip.

The mel front-end is soundsmith.codecs.mel (the AudioLDM convention), with the hop scaled to the clip's rate
so every backend's output (16 kHz ours, 32 kHz MusicGen) gets 100 frames per second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def mel_image(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono log-mel `[F, S]` of a clip `[C, T]` (or `[T]`)."""
    import torch
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    mono = np.asarray(wave, dtype=np.float32).reshape(-1, np.shape(wave)[-1]).mean(0)  # [T]
    hop = max(2, 2 * round(sample_rate / 200))  # even, so (n_fft - hop) splits into equal padding
    n_fft = 1024 if sample_rate <= 24_000 else 2048
    cfg = MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, win_length=n_fft,
                    f_max=min(8_000.0, sample_rate / 2))
    if mono.shape[0] < n_fft:  # a very short clip: pad so there is at least one frame
        mono = np.pad(mono, (0, n_fft - mono.shape[0]))
    with torch.no_grad():
        return MelSpectrogram(cfg)(torch.from_numpy(mono)[None])[0].numpy()


def clip_figure_png(wave: np.ndarray, sample_rate: int, png: str | os.PathLike, *, title: str = "") -> Path:
    """Draw the waveform over the mel spectrogram and write `png` atomically; return its path."""
    from matplotlib.figure import Figure  # not pyplot: the app draws from several threads

    wave = np.asarray(wave, dtype=np.float32)
    wave = wave[None] if wave.ndim == 1 else wave  # [C, T]
    seconds = wave.shape[-1] / sample_rate
    fig = Figure(figsize=(7.0, 3.0), dpi=90)
    ax_wave, ax_mel = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    t = np.arange(wave.shape[-1]) / sample_rate
    step = max(1, wave.shape[-1] // 4000)  # at most ~4000 points per channel
    for c in range(wave.shape[0]):
        ax_wave.plot(t[::step], wave[c, ::step], lw=0.6, color=("#4c72b0", "#dd8452")[c % 2])
    ax_wave.set_ylim(-1.05, 1.05)
    ax_wave.set_ylabel("amplitude", fontsize=8)
    ax_wave.set_xlim(0, seconds)
    if title:
        ax_wave.set_title(title[:90], fontsize=9)
    mel = mel_image(wave, sample_rate)
    ax_mel.imshow(mel, origin="lower", aspect="auto", extent=(0, max(seconds, 1e-3), 0, mel.shape[0]), cmap="magma")
    ax_mel.set_ylabel("mel bin", fontsize=8)
    ax_mel.set_xlabel("seconds", fontsize=8)
    for ax in (ax_wave, ax_mel):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.part")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png
