"""The original HiFi-GAN checkpoint layout (jik876/hifi-gan) -> our `Vocoder` (transformers SpeechT5HifiGan names).

A jik876 generator checkpoint is `{"generator": state_dict}` with every convolution weight-normalised:
`X.weight_g` / `X.weight_v` (old `torch.nn.utils.weight_norm`) or `X.parametrizations.weight.original0/1`
(the newer API); they are folded into plain weights, w = g * v / ||v||. Module names are the
transformers ones except `ups.N` -> `upsampler.N`; `mean` / `scale` are added (unused:
`normalize_before=False`). The strides and dilations are not in the tensor shapes: they come from the
training config.json (`config_from_jik876`).

Used by the checkpoint converter (`soundsmith convert hifigan`) and by the pretrained universal
HiFi-GAN vocoder (codecs/hifigan_universal.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .mel import MelConfig
from .vocoder import VocoderConfig

_WN_OLD = re.compile(r"^(.*)\.weight_(g|v)$")
_WN_NEW = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")
_UPS = re.compile(r"^ups\.(\d+)\.(weight|bias)$")


def fold_weight_norm(state_dict: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """Replace every weight-norm pair (g, v) by the plain weight g * v / ||v|| (norm over all dims but g's)."""
    pairs: dict[str, dict[str, Tensor]] = {}
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        m = _WN_OLD.match(key) or _WN_NEW.match(key)
        if m is None:
            out[key] = value
            continue
        part = {"g": "g", "v": "v", "0": "g", "1": "v"}[m.group(2)]
        pairs.setdefault(m.group(1), {})[part] = value
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            half = "weight_v" if "g" in pair else "weight_g"
            raise ValueError(f"{source}: missing key '{prefix}.{half}' (a weight-norm pair is incomplete)")
        if f"{prefix}.weight" in out:
            raise ValueError(f"{source}: key '{prefix}.weight' is present beside its weight-norm pair")
        out[f"{prefix}.weight"] = _fold(pair["g"], pair["v"], f"{source}: '{prefix}'")
    return out


def _fold(g: Tensor, v: Tensor, where: str) -> Tensor:
    if g.dim() != v.dim():
        raise ValueError(f"{where}: weight_g {list(g.shape)} and weight_v {list(v.shape)} do not match")
    dims = [d for d in range(g.dim()) if g.shape[d] != 1]
    if len(dims) > 1 or any(g.shape[d] != v.shape[d] for d in dims):
        raise ValueError(f"{where}: weight_g {list(g.shape)} does not fit weight_v {list(v.shape)}")
    dim = dims[0] if dims else 0  # all-singleton g: weight_norm's default dim 0 with one channel
    other = [d for d in range(v.dim()) if d != dim]
    norm = v.float().pow(2).sum(dim=other, keepdim=True).sqrt()
    return (v.float() * (g.float() / norm)).to(v.dtype)


def generator_to_transformers(state_dict: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """A jik876 generator state dict (weight norm folded or not) -> SpeechT5HifiGan key names."""
    plain = fold_weight_norm(state_dict, source)
    out: dict[str, Any] = {}
    for key, value in plain.items():
        m = _UPS.match(key)
        out[f"upsampler.{m.group(1)}.{m.group(2)}" if m else key] = value
    if "conv_pre.weight" not in out:
        raise ValueError(f"{source}: missing key 'conv_pre.weight' (not a HiFi-GAN generator)")
    n_mels = out["conv_pre.weight"].shape[1]
    out.setdefault("mean", torch.zeros(n_mels))
    out.setdefault("scale", torch.ones(n_mels))
    return out


def config_from_jik876(cfg: Mapping[str, Any], source: str | os.PathLike) -> VocoderConfig:
    """jik876's training config.json (config_v1.json ...) -> VocoderConfig with its mel front-end."""
    if str(cfg.get("resblock", "1")) != "1":
        raise ValueError(f"{source}: resblock={cfg['resblock']!r} is not supported (transformers' "
                         "SpeechT5HifiGan implements ResBlock1 only)")
    need = ("upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel", "resblock_kernel_sizes",
            "resblock_dilation_sizes", "num_mels", "sampling_rate", "hop_size", "n_fft", "win_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"{source}: missing field {missing[0]!r} of a HiFi-GAN config")
    try:
        mel = MelConfig(sample_rate=int(cfg["sampling_rate"]), n_fft=int(cfg["n_fft"]),
                        hop_length=int(cfg["hop_size"]), win_length=int(cfg["win_size"]),
                        n_mels=int(cfg["num_mels"]), f_min=float(cfg.get("fmin", 0)),
                        f_max=float(cfg.get("fmax") or cfg["sampling_rate"] / 2))
        return VocoderConfig(
            model_in_dim=int(cfg["num_mels"]), sampling_rate=int(cfg["sampling_rate"]),
            upsample_rates=tuple(cfg["upsample_rates"]), upsample_kernel_sizes=tuple(cfg["upsample_kernel_sizes"]),
            upsample_initial_channel=int(cfg["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(cfg["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in cfg["resblock_dilation_sizes"]), mel=mel,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {' '.join(str(err).split())}") from None
