"""Audio <-> latents/tokens and back: audio I/O, the mel front-end, the mel VAE + vocoder and the
RVQ codec. Each codec offers `encode(wave)`, `decode(...)`, `sample_rate` and `frame_rate`.

Installed as `soundsmith.codecs`; it never shadows the standard library's `codecs`.
"""

from .audio import (
    check_sample_rate,
    check_wave,
    loudness,
    loudness_normalize,
    peak_normalize,
    read_audio,
    resample,
    to_channels,
    write_audio,
)

__all__ = [
    "check_sample_rate",
    "check_wave",
    "loudness",
    "loudness_normalize",
    "peak_normalize",
    "read_audio",
    "resample",
    "to_channels",
    "write_audio",
]
