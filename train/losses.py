"""Training losses for the codecs: mel L1, multi-resolution STFT, KL, and the GAN family (LSGAN as in
HiFi-GAN, hinge as in EnCodec/MelGAN) with feature matching.

Discriminator outputs are lists (one entry per sub-discriminator) of logits, and lists of lists of
intermediate feature maps; every GAN loss sums over sub-discriminators and means within each, as the
HiFi-GAN reference does. auraloss has a multi-resolution STFT loss but is not installed here; ours is
the same formula (Yamamoto et al. 2020: spectral convergence + log-magnitude L1) in a few lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mel_l1(mel_fake: Tensor, mel_real: Tensor) -> Tensor:
    """Mean absolute difference of two log-mels `[B, F, S]` (HiFi-GAN weighs it x45)."""
    return F.l1_loss(mel_fake, mel_real)


def kl_loss(posterior: object) -> Tensor:
    """KL(posterior || N(0, I)) summed over latent elements, averaged over the batch (LDM convention)."""
    return posterior.kl().mean()  # diffusers' DiagonalGaussianDistribution.kl() sums dims [1, 2, 3] -> [B]


# ------------------------------------------------------------------------------------------------ GAN


def lsgan_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """sum_k mean((1 - D_k(real))^2) + mean(D_k(fake)^2) (HiFi-GAN `discriminator_loss`)."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f ** 2) for r, f in zip(real_logits, fake_logits))


def lsgan_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """sum_k mean((1 - D_k(fake))^2) (HiFi-GAN `generator_loss`)."""
    return sum(torch.mean((1 - f) ** 2) for f in fake_logits)


def hinge_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """sum_k mean(relu(1 - D_k(real))) + mean(relu(1 + D_k(fake))) (MelGAN/EnCodec)."""
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))


def hinge_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """sum_k mean(relu(1 - D_k(fake)))."""
    return sum(F.relu(1 - f).mean() for f in fake_logits)


def feature_matching_loss(real_features: Sequence[Sequence[Tensor]], fake_features: Sequence[Sequence[Tensor]]
                          ) -> Tensor:
    """sum over sub-discriminators and layers of mean|real - fake| (real detached; HiFi-GAN weighs it x2)."""
    return sum(torch.mean(torch.abs(r.detach() - f))
               for rs, fs in zip(real_features, fake_features) for r, f in zip(rs, fs))


# ---------------------------------------------------------------------------------- spectral losses


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-STFT-magnitude L1, averaged over several STFT resolutions.

    Args:
        resolutions: (n_fft, hop, win) triples (default: the Parallel WaveGAN set, which auraloss uses too).
        eps: magnitude floor before the log.
    Call: `loss(fake [B, T] or [B, 1, T], real) -> scalar`.
    """

    def __init__(self, resolutions: Sequence[tuple[int, int, int]] = ((512, 50, 240), (1024, 120, 600),
                                                                       (2048, 240, 1200)), eps: float = 1e-7):
        super().__init__()
        self.resolutions = tuple(tuple(int(v) for v in r) for r in resolutions)
        self.eps = eps
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window{i}", torch.hann_window(win), persistent=False)

    def magnitude(self, wave: Tensor, i: int) -> Tensor:
        n_fft, hop, win = self.resolutions[i]
        window = getattr(self, f"window{i}")
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]).float(), n_fft, hop_length=hop, win_length=win,
                          window=window, return_complex=True)  # [B, n_fft/2+1, frames]
        return spec.abs()

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        total = fake.new_zeros(())
        for i in range(len(self.resolutions)):
            mag_f, mag_r = self.magnitude(fake, i), self.magnitude(real, i)
            # convergence on the unclamped magnitudes: it still has a gradient when the output is
            # nearly silent (a freshly initialised HiFi-GAN generator outputs ~1e-8), where the
            # clamped log terms (this one and the mel L1) have none
            convergence = torch.linalg.norm(mag_r - mag_f) / torch.linalg.norm(mag_r).clamp(min=self.eps)
            log_l1 = F.l1_loss(torch.log(mag_f.clamp(min=self.eps)), torch.log(mag_r.clamp(min=self.eps)))
            total = total + convergence + log_l1
        return total / len(self.resolutions)
