"""The latent-diffusion prior: diffusers `UNet2DConditionModel` in the AudioLDM layout.

The UNet denoises the scaled mel-VAE latent `[B, 8, S, F/4]` (S = 25 latent frames per second, time
first as AudioLDM lays it out). The 512-d CLAP embedding enters as AudioLDM's "FiLM" condition:
diffusers' `class_embed_type="simple_projection"` projects it to the time-embedding width and
`class_embeddings_concat=True` concatenates it to the timestep embedding, which every ResNet block
reads. Attention blocks, where a level has them, attend to the latent itself (AudioLDM calls them with
`encoder_hidden_states=None`), or, with `cross_attention=True`, to the prompt's token states.

The model is a plain diffusers module, so `unet.save_pretrained(dir)` writes a folder diffusers
loads (`UNet2DConditionModel.from_pretrained`), and a published AudioLDM `unet/` loads here as it is.
`UNetConfig` only describes the sizes we build; `default_unet_config()` is the shipped size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from soundsmith.core.weights import config_from_dict
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    latent_channels: int = 8  # the VAE's latent channels (in and out)
    latent_bins: int = 16  # F/4: latent frequency bins (64 mel bins / 4); recorded, shapes do not depend on it
    block_out_channels: tuple[int, ...] = (64, 128, 192)  # one level per entry; each but the last halves S and F
    layers_per_block: int = 1  # ResNet blocks per level (AudioLDM: 2)
    # which levels get attention blocks (AudioLDM-S: (False, True, True, True)) and whether the mid block does
    attention_levels: tuple[bool, ...] = (False, False, False)
    mid_attention: bool = True  # self-attention over the coarsest latent (5 s -> 32 x 4 positions): global context
    head_channels: int = 32  # channels per attention head (AudioLDM: 32, large: 64)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every width
    condition_dim: int = 512  # CLAP joint space (LAION CLAP's size, so LAION embeddings fit too)
    cross_attention: bool = False  # attend to token states instead of only the latent itself
    token_dim: int = 384  # width of those token states (MiniLM: 384); used only with cross_attention
    sample_frames: int = 128  # latent frames of the training window (5.12 s); diffusers' default length

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        set_(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ValueError(f"UNetConfig.block_out_channels must be positive widths, got {self.block_out_channels}")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"UNetConfig.attention_levels has {len(self.attention_levels)} entries for "
                             f"{len(self.block_out_channels)} levels in block_out_channels")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"UNetConfig.norm_num_groups={self.norm_num_groups} must divide every width in "
                             f"block_out_channels={self.block_out_channels}")
        attended = [c for a, c in zip(self.attention_levels, self.block_out_channels) if a]
        if self.mid_attention:
            attended.append(self.block_out_channels[-1])
        if any(c % self.head_channels for c in attended):
            raise ValueError(f"UNetConfig.head_channels={self.head_channels} must divide the width of every level "
                             f"with attention (block_out_channels={self.block_out_channels})")
        for name in ("latent_channels", "latent_bins", "layers_per_block", "head_channels", "condition_dim",
                     "token_dim", "sample_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cross_attention and not (any(self.attention_levels) or self.mid_attention):
            raise ValueError("UNetConfig.cross_attention needs attention somewhere (attention_levels or mid_attention)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "UNetConfig") -> UNetConfig:
        return config_from_dict(cls, data, where, metadata_prefix=None)


def default_unet_config() -> UNetConfig:
    """The shipped size: 7.95 M parameters (15.9 MB in fp16), self-attention only in the mid block, where the
    latent of 5 s is 32 x 4 positions. Measured per CFG step (batch 2, 5 s) against other sizes on one
    loaded core: 64-128-256 without attention 0.40 s, 64-128-192 with attention at level 3 + mid 0.45 s
    (20.8 MB: over budget), this one 0.38 s; the first, full-resolution level dominates the cost. That
    puts 5 s at 16 DPM-Solver++ steps at ~1.3 s of UNet time on the idle 2-core CPU (feasibility.md: the
    64-128-256 UNet runs 0.069 s per step for 4 s)."""
    return UNetConfig()


def tiny_unet_config(**overrides: Any) -> UNetConfig:
    """A few-thousand-parameter UNet for tests (seconds on a CPU)."""
    values = dict(block_out_channels=(16, 32), attention_levels=(False, True), head_channels=8, norm_num_groups=8,
                  sample_frames=16)
    values.update(overrides)
    return UNetConfig(**values)


def unet_kwargs(config: UNetConfig) -> dict[str, Any]:
    """The `UNet2DConditionModel` constructor arguments for `config` (AudioLDM layout)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels))
    # Self-attention only (AudioLDM): cross_attention_dim equals each level's width and the UNet is called
    # with encoder_hidden_states=None, so attn2 attends to the latent again. With cross_attention, attn2
    # attends to token states of width token_dim.
    cross_dim: int | tuple[int, ...] = config.token_dim if config.cross_attention else config.block_out_channels
    # diffusers reads `attention_head_dim` as the number of heads in this class (a legacy name), so give it
    # widths // head_channels, which makes every head head_channels wide as in AudioLDM's num_head_channels.
    heads = tuple(max(1, c // config.head_channels) for c in config.block_out_channels)
    return dict(
        sample_size=config.sample_frames,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if config.mid_attention else "UNetMidBlock2D",
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=cross_dim,
        attention_head_dim=heads,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=config.condition_dim,
        class_embeddings_concat=True,
    )


def build_unet(config: UNetConfig | None = None) -> nn.Module:
    """A randomly initialised `UNet2DConditionModel` of `config` (fp32, CPU)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_kwargs(config or default_unet_config()))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
