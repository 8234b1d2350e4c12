"""Mel VAE: diffusers `AutoencoderKL` over the 1-channel log-mel image, in the AudioLDM layout.

The log-mel `[B, F, S]` is laid out as an image `[B, 1, S, F]` (time first, as AudioLDM does); the
encoder downsamples both axes by 2 ** (len(block_out_channels) - 1) = 4, so the latent is
`[B, latent_channels, S/4, F/4]`. The weights are a plain diffusers `AutoencoderKL` state dict, so a
published diffusers `vae/` folder (AudioLDM, MusicLDM) loads as it is.

`decode` takes the raw latent; the diffusion prior works on `latent * scaling_factor`
(`MelLatentCodec` applies the factor, as diffusers' pipelines do).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from soundsmith.core.files import read_config
from soundsmith.core.weights import (
    config_from_dict,
    find_weights,
    load_strict,
    read_state_dict,
    save_safetensors,
)
from torch import Tensor, nn

from .mel import MelConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# diffusers' names for the same state dict, newest first
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")


@dataclass(frozen=True)
class MelVAEConfig:
    n_mels: int = 64  # F; must equal mel.n_mels and be divisible by the downsampling factor
    latent_channels: int = 8  # AudioLDM: 8
    block_out_channels: tuple[int, ...] = (32, 64, 128)  # AudioLDM-S: (128, 256, 512); 3 blocks = 4x down
    layers_per_block: int = 1  # AudioLDM: 2
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block width
    mid_block_add_attention: bool = True
    scaling_factor: float = 1.0  # 1 / std of the latent on the training set; measured after training
    mel: MelConfig | None = None  # the front-end the VAE was trained on; None = MelConfig(n_mels=n_mels)

    def __post_init__(self) -> None:
        mel = self.mel
        if mel is None:
            mel = MelConfig(n_mels=self.n_mels)
        elif isinstance(mel, dict):
            mel = config_from_dict(MelConfig, mel, "MelVAEConfig.mel")
        object.__setattr__(self, "mel", mel)
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if mel.n_mels != self.n_mels:
            raise ValueError(f"MelVAEConfig.n_mels={self.n_mels} differs from mel.n_mels={mel.n_mels}")
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ValueError(f"MelVAEConfig.block_out_channels must be positive widths, got {self.block_out_channels}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"MelVAEConfig.norm_num_groups={self.norm_num_groups} must divide every width in "
                             f"block_out_channels={self.block_out_channels}")
        if self.n_mels % self.downsample_factor:
            raise ValueError(f"MelVAEConfig.n_mels={self.n_mels} must be divisible by the downsampling factor "
                             f"{self.downsample_factor} (2 ** (len(block_out_channels) - 1))")
        if self.latent_channels < 1:
            raise ValueError(f"MelVAEConfig.latent_channels must be >= 1, got {self.latent_channels}")
        if self.layers_per_block < 1:
            raise ValueError(f"MelVAEConfig.layers_per_block must be >= 1, got {self.layers_per_block}")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"MelVAEConfig.scaling_factor must be a finite number > 0, got {self.scaling_factor}")

    @property
    def downsample_factor(self) -> int:
        """Time and frequency downsampling of the latent (4 for three blocks)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelVAEConfig:
        return config_from_dict(cls, data, "MelVAEConfig")



def config_from_diffusers(config: dict[str, Any], source: str | os.PathLike = "config.json",
                          mel: MelConfig | None = None) -> MelVAEConfig:
    """A diffusers `AutoencoderKL` config.json (AudioLDM/MusicLDM `vae/`) -> MelVAEConfig.

    Only the AudioLDM family is accepted: 1 input/output channel, plain encoder/decoder blocks, SiLU,
    quant convs, no latent shift. The mel front-end is not in a diffusers config: `mel` (default: the
    AudioLDM one) says which front-end the VAE was trained on.
    """
    mel = mel or MelConfig()
    required = {"in_channels": 1, "out_channels": 1, "act_fn": "silu", "shift_factor": None,
                "latents_mean": None, "latents_std": None, "use_quant_conv": True, "use_post_quant_conv": True}
    for key, want in required.items():
        if config.get(key, want) != want:
            raise ValueError(f"{source}: {key}={config[key]!r} is not supported (a mel VAE needs {want!r})")
    n_blocks = len(config.get("block_out_channels", ()))
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(key, [want] * n_blocks))
        if types != [want] * n_blocks:
            raise ValueError(f"{source}: {key}={types} is not supported (expected {n_blocks} x {want})")
    return MelVAEConfig(
        n_mels=mel.n_mels,
        mel=mel,
        latent_channels=int(config.get("latent_channels", 4)),
        block_out_channels=tuple(config.get("block_out_channels", (64,))),
        layers_per_block=int(config.get("layers_per_block", 1)),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
    )


def build_autoencoder(config: MelVAEConfig) -> nn.Module:
    """The diffusers `AutoencoderKL` that `MelVAE` wraps (fp32, random init)."""
    from diffusers import AutoencoderKL

    n = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        mid_block_add_attention=config.mid_block_add_attention,
        scaling_factor=config.scaling_factor,
    )


class MelVAE(nn.Module):
    """log-mel `[B, F, S]` <-> latent `[B, latent_channels, S/4, F/4]` (AudioLDM's VAE)."""

    def __init__(self, config: MelVAEConfig | None = None):
        super().__init__()
        self.config = config or MelVAEConfig()
        self.autoencoder = build_autoencoder(self.config)

    # ------------------------------------------------------------------------------------- model

    def _check_mel(self, mel: Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"mel must be [B, F={self.config.n_mels}, S], got {list(mel.shape)}")
        if mel.shape[2] % self.config.downsample_factor:
            raise ValueError(f"mel frames S={mel.shape[2]} must be a multiple of {self.config.downsample_factor} "
                             "(pad the mel or the wave first; MelLatentCodec does this)")

    def encode(self, mel: Tensor) -> Any:
        """`[B, F, S]` -> diagonal Gaussian posterior over `[B, latent, S/4, F/4]` (.mean, .sample(generator), .kl())."""
        self._check_mel(mel)
        image = mel.transpose(1, 2).unsqueeze(1)  # [B, 1, S, F]
        return self.autoencoder.encode(image).latent_dist

    def decode(self, z: Tensor) -> Tensor:
        """Raw (unscaled) latent `[B, latent, S/4, F/4]` -> log-mel `[B, F, S]`."""
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"latent must be [B, {self.config.latent_channels}, S/4, F/4], got {list(z.shape)}")
        image = self.autoencoder.decode(z).sample  # [B, 1, S, F]
        return image[:, 0].transpose(1, 2)  # [B, F, S]

    def forward(self, mel: Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, Any]:
        """Training pass: `[B, F, S]` -> (reconstruction `[B, F, S]`, posterior)."""
        posterior = self.encode(mel)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mean
        return self.decode(z), posterior

    # ---------------------------------------------------------------------------------------- I/O

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` + `model.safetensors` (diffusers AutoencoderKL key names) into `folder`."""
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.autoencoder.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        save_safetensors(state, folder / WEIGHTS_NAME)
        write_json(folder / CONFIG_NAME, {"_class_name": "MelVAE", **self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, mel: MelConfig | None = None) -> MelVAE:
        """Load our folder (`config.json` + `model.safetensors`) or a diffusers `AutoencoderKL` folder.

        `mel` names the front-end of a diffusers folder, whose config does not say (default: AudioLDM's,
        64 bins); our own folders carry theirs. The model is returned on CPU in float32, in eval mode; the
        caller picks device and dtype.
        """
        folder = Path(folder)
        raw = read_config(folder)
        kind = raw.get("_class_name")
        if kind == "MelVAE":
            config = MelVAEConfig.from_dict(raw)
            weights = find_weights(folder, (WEIGHTS_NAME,))
        elif kind == "AutoencoderKL":
            config = config_from_diffusers(raw, folder / CONFIG_NAME, mel=mel)
            weights = find_weights(folder, DIFFUSERS_WEIGHTS)
        else:
            raise ValueError(f"{folder / CONFIG_NAME}: _class_name={kind!r} is neither 'MelVAE' nor a diffusers "
                             "'AutoencoderKL'")
        model = cls(config)
        load_strict(model.autoencoder, read_state_dict(weights), weights, what="MelVAE")
        return model.float().eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
