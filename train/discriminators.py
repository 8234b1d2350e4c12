"""GAN discriminators for the codecs: HiFi-GAN's multi-period (MPD) and multi-scale (MSD) wave
discriminators, and EnCodec's multi-scale STFT discriminator (MS-STFTD) for the RVQ codec.

Each takes a batch of waves `[B, T]` (or `[B, 1, T]`) and returns a `DiscriminatorOutput`: per
sub-discriminator, the logits and the list of intermediate feature maps (for feature matching).
Widths are arguments: the reference widths (HiFi-GAN V1: up to 1024 channels, ~70 M parameters for
MPD + MSD) are far too slow for a 2-core CPU, so the training configs pick narrower ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LRELU_SLOPE = 0.1  # HiFi-GAN


@dataclass
class DiscriminatorOutput:
    logits: list[Tensor]  # one per sub-discriminator, each [B, ...]
    features: list[list[Tensor]]  # per sub-discriminator, its feature maps after each layer

    def __add__(self, other: DiscriminatorOutput) -> DiscriminatorOutput:
        return DiscriminatorOutput(self.logits + other.logits, self.features + other.features)

    def split(self, sizes: Sequence[int]) -> list[DiscriminatorOutput]:
        """Undo batch concatenation: one output per chunk of the batch (e.g. real, fake)."""
        logits = [torch.split(x, list(sizes)) for x in self.logits]
        feats = [[torch.split(f, list(sizes)) for f in fs] for fs in self.features]
        return [DiscriminatorOutput([x[i] for x in logits], [[f[i] for f in fs] for fs in feats])
                for i in range(len(sizes))]


def _conv_stack(x: Tensor, convs: nn.ModuleList, conv_post: nn.Module, slope: float) -> tuple[Tensor, list[Tensor]]:
    """A sub-discriminator's body: each conv then leaky ReLU, then `conv_post`. Returns the flattened
    logits `[B, N]` and the feature maps after each layer (`conv_post`'s output last)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), slope)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return torch.flatten(x, 1, -1), features


def _as_wave(wave: Tensor) -> Tensor:
    if wave.dim() == 2:
        return wave.unsqueeze(1)  # [B, 1, T]
    if wave.dim() == 3 and wave.shape[1] == 1:
        return wave
    raise ValueError(f"discriminators take mono waves [B, T] or [B, 1, T], got {list(wave.shape)}")


# ---------------------------------------------------------------------------------- HiFi-GAN MPD


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN `DiscriminatorP`: the wave folded into `[B, 1, T/p, p]`, then (k x 1) 2-D convolutions."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024), kernel_size: int = 5,
                 stride: int = 3):
        super().__init__()
        self.period = period
        pad = (kernel_size - 1) // 2
        convs, c_in = [], 1
        for i, c in enumerate(channels):
            last = i == len(channels) - 1
            convs.append(weight_norm(nn.Conv2d(c_in, c, (kernel_size, 1), (1 if last else stride, 1), (pad, 0))))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(c_in, 1, (3, 1), 1, (1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
            t = x.shape[-1]
        x = x.view(b, c, t // self.period, self.period)  # [B, 1, T/p, p]
        return _conv_stack(x, self.convs, self.conv_post, LRELU_SLOPE)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN MPD: one `PeriodDiscriminator` per period (default 2, 3, 5, 7, 11)."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 channels: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        x = _as_wave(wave)
        outs = [d(x) for d in self.discriminators]
        return DiscriminatorOutput([o[0] for o in outs], [o[1] for o in outs])


# ---------------------------------------------------------------------------------- HiFi-GAN MSD

# HiFi-GAN `DiscriminatorS` layers: (kernel, stride, groups); widths are passed in
_MSD_LAYERS = ((15, 1, 1), (41, 2, 4), (41, 2, 16), (41, 4, 16), (41, 4, 16), (41, 1, 16), (5, 1, 1))


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN `DiscriminatorS`: grouped 1-D convolutions over the raw (or pooled) wave."""

    def __init__(self, channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024),
                 use_spectral_norm: bool = False):
        super().__init__()
        if len(channels) != len(_MSD_LAYERS):
            raise ValueError(f"ScaleDiscriminator takes {len(_MSD_LAYERS)} widths, got {len(channels)}")
        norm = spectral_norm if use_spectral_norm else weight_norm
        convs, c_in = [], 1
        for c, (k, s, g) in zip(channels, _MSD_LAYERS):
            g = min(g, c_in, c)
            if c_in % g or c % g:
                raise ValueError(f"ScaleDiscriminator widths {tuple(channels)}: {c_in} -> {c} is not divisible "
                                 f"into {g} groups")
            convs.append(norm(nn.Conv1d(c_in, c, k, s, groups=g, padding=(k - 1) // 2)))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm(nn.Conv1d(c_in, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return _conv_stack(x, self.convs, self.conv_post, LRELU_SLOPE)


class MultiScaleDiscriminator(nn.Module):
    """HiFi-GAN MSD: the wave at 1x, 2x and 4x average-pooled; the first with spectral norm."""

    def __init__(self, num_scales: int = 3, channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(channels, use_spectral_norm=(i == 0)) for i in range(num_scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        x = _as_wave(wave)
        logits, features = [], []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                x = self.pool(x)
            out, feats = d(x)
            logits.append(out)
            features.append(feats)
        return DiscriminatorOutput(logits, features)


class HifiGanDiscriminator(nn.Module):
    """MPD + MSD as one module (one optimizer, one DDP wrapper): logits/features of MPD then MSD."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 mpd_channels: Sequence[int] = (32, 128, 512, 1024, 1024), num_scales: int = 3,
                 msd_channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(periods, mpd_channels)
        self.msd = MultiScaleDiscriminator(num_scales, msd_channels)

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        return self.mpd(wave) + self.msd(wave)


# ------------------------------------------------------------------------------- EnCodec MS-STFTD


class STFTDiscriminator(nn.Module):
    """EnCodec `DiscriminatorSTFT`: 2-D convolutions over the complex STFT (real, imag as channels)."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, filters: int = 32, max_filters: int = 1024,
                 dilations: Sequence[int] = (1, 2, 4), kernel_size: tuple[int, int] = (3, 9)):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        pad = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        convs = [weight_norm(nn.Conv2d(2, filters, kernel_size, padding=pad))]
        c_in = filters
        for i, d in enumerate(dilations):
            c = min(filters * 2 ** (i + 1), max_filters)
            convs.append(weight_norm(nn.Conv2d(c_in, c, kernel_size, stride=(1, 2), dilation=(d, 1),
                                               padding=((kernel_size[0] - 1) * d // 2, pad[1]))))
            c_in = c
        convs.append(weight_norm(nn.Conv2d(c_in, c_in, (kernel_size[0], kernel_size[0]), padding=(pad[0], pad[0]))))
        self.convs = nn.ModuleList(convs)
        self.conv_post = weight_norm(nn.Conv2d(c_in, 1, (kernel_size[0], kernel_size[0]), padding=(pad[0], pad[0])))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(x[:, 0], self.n_fft, self.hop_length, self.win_length, self.window, normalized=True,
                          return_complex=True)  # [B, n_freqs, S]
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, S, n_freqs]
        return _conv_stack(z, self.convs, self.conv_post, 0.2)  # EnCodec's slope


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec MS-STFTD: `STFTDiscriminator`s at several FFT sizes (default 1024, 2048, 512, 256, 128)."""

    def __init__(self, n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128), filters: int = 32,
                 max_filters: int = 1024):
        super().__init__()
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(n, n // 4, n, filters=filters, max_filters=max_filters) for n in n_ffts)

    def forward(self, wave: Tensor) -> DiscriminatorOutput:
        x = _as_wave(wave)
        outs = [d(x) for d in self.discriminators]
        return DiscriminatorOutput([o[0] for o in outs], [o[1] for o in outs])
