"""`soundsmith convert FORMAT SRC OUT`: public checkpoint formats -> soundsmith model folders.

One module per source format; each converter is `convert(source, out, *, trust_pickle=False) -> Path`
(the output folder). Loading never unpickles unless `trust_pickle=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _audioldm() -> Callable[..., Path]:
    from .convert_audioldm import convert_audioldm  # original AudioLDM .ckpt: VAE + vocoder

    return convert_audioldm


def _hifigan() -> Callable[..., Path]:
    from .convert_hifigan import convert_hifigan  # jik876/hifi-gan generator + its config.json

    return convert_hifigan


def _laion_clap() -> Callable[..., Path]:
    from .convert_laion_clap import convert_laion_clap  # original laion_clap .pt -> transformers ClapModel

    return convert_laion_clap


def _encodec() -> Callable[..., Path]:
    from .convert_encodec import convert_encodec  # original encodec / audiocraft EnCodec -> NeuralCodec

    return convert_encodec


CONVERTERS: dict[str, Callable[[], Callable[..., Path]]] = {
    "audioldm": _audioldm,
    "hifigan": _hifigan,
    "laion-clap": _laion_clap,
    "encodec": _encodec,
}
