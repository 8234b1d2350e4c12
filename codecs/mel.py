"""Log-mel front-end in the AudioLDM / HiFi-GAN convention.

16 kHz, n_fft 1024, hop 160, Hann window 1024, 64 Slaney mel bins over 0-8000 Hz, magnitude
(power 1) spectrogram, reflect-padding of (n_fft - hop) / 2 per side with `center=False` so that
T samples give T / hop frames, then log(clamp(x, 1e-5)). Batched in torch; no torchaudio (its
wheels do not load beside the CPU torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8_000.0
    power: float = 1.0  # 1 = magnitude (HiFi-GAN/AudioLDM); 2 = power
    log_floor: float = 1e-5  # log(clamp(x, log_floor))

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"MelConfig.sample_rate must be > 0, got {self.sample_rate}")
        if not 0 < self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError("MelConfig needs 0 < hop_length <= win_length <= n_fft, got "
                             f"hop_length={self.hop_length}, win_length={self.win_length}, n_fft={self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError(f"MelConfig needs n_fft - hop_length even (padding is split equally), "
                             f"got n_fft={self.n_fft}, hop_length={self.hop_length}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"MelConfig needs 0 <= f_min < f_max <= sample_rate/2 = {self.sample_rate / 2}, "
                             f"got f_min={self.f_min}, f_max={self.f_max}")
        if self.n_mels < 1:
            raise ValueError(f"MelConfig.n_mels must be >= 1, got {self.n_mels}")
        if self.power not in (1.0, 2.0):
            raise ValueError(f"MelConfig.power must be 1 (magnitude) or 2 (power), got {self.power}")

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filterbank(cfg: MelConfig) -> Tensor:
    """Slaney-scale, Slaney-normalised triangular filters `[F, n_fft // 2 + 1]` (F = n_mels).

    Uses transformers' implementation (the same maths as librosa's default `filters.mel`).
    """
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1,
        num_mel_filters=cfg.n_mels,
        min_frequency=cfg.f_min,
        max_frequency=cfg.f_max,
        sampling_rate=cfg.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )  # [n_freqs, F]
    return torch.from_numpy(fb.T.copy()).float()  # [F, n_freqs]


class MelSpectrogram(nn.Module):
    """wave `[B, T]` or `[B, C, T]` -> log-mel `[B, F, S]` or `[B, C, F, S]`, with S = T // hop."""

    def __init__(self, cfg: MelConfig | None = None):
        super().__init__()
        self.cfg = cfg or MelConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(self.cfg), persistent=False)  # [F, n_freqs]

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length

    def magnitude(self, wave: Tensor) -> Tensor:
        """Linear-frequency |STFT|^power `[..., n_freqs, S]` with the padding convention above."""
        cfg = self.cfg
        lead = wave.shape[:-1]
        x = wave.reshape(-1, wave.shape[-1]).float()  # [N, T]
        pad = (cfg.n_fft - cfg.hop_length) // 2
        if x.shape[-1] <= pad:
            raise ValueError(f"need more than {pad} samples for the mel front-end, got {x.shape[-1]}")
        x = F.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]  # [N, T + 2 * pad]
        spec = torch.stft(
            x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            window=self.window.to(x.dtype), center=False, return_complex=True,
        )  # [N, n_freqs, S]
        mag = spec.abs() if cfg.power == 1.0 else spec.abs().pow(2)
        return mag.reshape(*lead, *mag.shape[-2:])

    def forward(self, wave: Tensor) -> Tensor:
        mag = self.magnitude(wave)  # [..., n_freqs, S]
        mel = torch.matmul(self.filterbank.to(mag.dtype), mag)  # [..., F, S]
        return torch.log(torch.clamp(mel, min=self.cfg.log_floor))
