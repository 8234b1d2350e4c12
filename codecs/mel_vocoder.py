"""The vocoder contract: log-mel `[B, F, S]` -> wave `[B, T]` (the registry is codecs/vocoders.py).

Every mel -> wave decoder of soundsmith is a `MelVocoder`: an `nn.Module` (so it moves with `.to(device)`)
with

    name          its registry name ("griffin-lim", "hifigan-universal", "hifigan")
    mel           the `MelConfig` of the log-mel it takes (bins, hop, rate): the producing codec's
    sample_rate   the rate of the wave it returns (may differ from `mel.sample_rate`; the codec resamples)
    forward(log_mel [B, F, S]) -> wave [B, T]
    spec()        {"name": ..., **params}: what a model folder's config.json records to rebuild it
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .mel import MelConfig


class MelVocoder(nn.Module):
    """Base of every vocoder: log-mel `[B, F, S]` in `self.mel` -> wave `[B, T]` at `self.sample_rate`."""

    name: str = ""

    @property
    def mel(self) -> MelConfig:  # the front-end of the log-mel it takes
        raise NotImplementedError

    @property
    def sample_rate(self) -> int:  # the rate of the wave it returns
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """{"name": registry name, **params}: enough for `build_vocoder` to rebuild it."""
        return {"name": self.name}

    def output_length(self, num_frames: int) -> int:
        """Samples `forward` returns for `num_frames` mel frames (S frames span S * hop input samples)."""
        return round(num_frames * self.mel.hop_length * self.sample_rate / self.mel.sample_rate)

    def check_mel(self, log_mel: Tensor) -> None:
        """One-line error for a mel this vocoder cannot take."""
        if log_mel.dim() != 3 or log_mel.shape[1] != self.mel.n_mels or log_mel.shape[2] < 1:
            raise ValueError(f"vocoder {self.name!r} takes a log-mel [B, F={self.mel.n_mels}, S>=1], "
                             f"got {list(log_mel.shape)}")


def check_same_mel(expected: MelConfig, vocoder: MelVocoder, where: str) -> None:
    """Refuse a vocoder built for another mel front-end (rate, bins, hop) than the codec makes."""
    e, v = expected, vocoder.mel
    if (e.sample_rate, e.n_mels, e.hop_length) != (v.sample_rate, v.n_mels, v.hop_length):
        raise ValueError(f"{where}: vocoder {vocoder.name!r} takes {v.n_mels}-bin mels at {v.sample_rate} Hz, hop "
                         f"{v.hop_length}; this codec makes {e.n_mels}-bin mels at {e.sample_rate} Hz, hop {e.hop_length}")
