"""Original AudioLDM checkpoints (haoheliu/AudioLDM `.ckpt`, a Lightning dict) -> soundsmith model folders.

This module handles the first stage: `first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*`
(latent-diffusion `AutoencoderKL` naming) -> our `MelVAE` (diffusers naming), and
`first_stage_model.vocoder.*` (HiFi-GAN naming) -> our `Vocoder`, written as a `MelLatentCodec` folder
(`vae/`, `vocoder/`). The latent-diffusion issue extends it to the UNet and CLAP text parts.

Key renames (latent-diffusion -> diffusers), written from the two architectures:
    {encoder,decoder}.conv_in / conv_out               -> same
    {encoder,decoder}.norm_out                         -> conv_norm_out
    encoder.down.I.block.J.*                           -> encoder.down_blocks.I.resnets.J.*
    encoder.down.I.downsample.conv                     -> encoder.down_blocks.I.downsamplers.0.conv
    decoder.up.I.block.J.*                             -> decoder.up_blocks.(N-1-I).resnets.J.*   (up runs reversed)
    decoder.up.I.upsample.conv                         -> decoder.up_blocks.(N-1-I).upsamplers.0.conv
    *.mid.block_1 / block_2                            -> *.mid_block.resnets.0 / 1
    *.mid.attn_1.norm / q / k / v / proj_out           -> *.mid_block.attentions.0.group_norm / to_q / to_k / to_v / to_out.0
                                                          (1x1 conv weights [C, C, 1, 1] -> linear [C, C])
    resnet nin_shortcut                                -> conv_shortcut
Vocoder: `ups.I` -> `upsampler.I`, weight norm folded if present, `mean`/`scale` added.

The VAE's widths, depth and latent size are read from tensor shapes; the vocoder's strides and
dilations are not in the weights and default to AudioLDM's (keyword arguments).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soundsmith.codecs.mel import MelConfig
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig
from soundsmith.codecs.weights import check_state_dict, read_state_dict
from torch import Tensor

from .convert_hifigan import generator_to_transformers

log = logging.getLogger(__name__)

VAE_PREFIX = "first_stage_model."
VOCODER_PREFIX = "first_stage_model.vocoder."
LDM_DEFAULT_SCALE = 0.18215  # latent-diffusion's scale_factor when the config does not scale by std

_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                 "nin_shortcut": "conv_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}


def vae_key(key: str, n_blocks: int) -> str | None:
    """One latent-diffusion VAE key (without `first_stage_model.`) -> its diffusers name; None if unknown."""
    if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(.+)\.(weight|bias)", key)
    if m is None:
        return None
    side, body, leaf = m.groups()
    if body in _TOP:
        return f"{side}.{_TOP[body]}.{leaf}"
    m = re.fullmatch(r"mid\.block_([12])\.(\w+)", body)
    if m and m.group(2) in _RESNET_PARTS:
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_RESNET_PARTS[m.group(2)]}.{leaf}"
    m = re.fullmatch(r"mid\.attn_1\.(\w+)", body)
    if m and m.group(1) in _ATTN_PARTS:
        return f"{side}.mid_block.attentions.0.{_ATTN_PARTS[m.group(1)]}.{leaf}"
    # encoder.down.I... keeps I; decoder.up.I... is stored in reverse order by diffusers
    kind, blocks, sampler = ("down", "down_blocks", "downsample") if side == "encoder" else ("up", "up_blocks", "upsample")
    m = re.fullmatch(rf"{kind}\.(\d+)\.block\.(\d+)\.(\w+)", body)
    if m and m.group(3) in _RESNET_PARTS:
        i = int(m.group(1)) if side == "encoder" else n_blocks - 1 - int(m.group(1))
        return f"{side}.{blocks}.{i}.resnets.{m.group(2)}.{_RESNET_PARTS[m.group(3)]}.{leaf}"
    m = re.fullmatch(rf"{kind}\.(\d+)\.{sampler}\.conv", body)
    if m:
        i = int(m.group(1)) if side == "encoder" else n_blocks - 1 - int(m.group(1))
        return f"{side}.{blocks}.{i}.{sampler}rs.0.conv.{leaf}"
    return None


def vae_config_from_state_dict(sd: Mapping[str, Tensor], source: str | os.PathLike, *,
                               mel: MelConfig, scaling_factor: float) -> MelVAEConfig:
    """Widths, depth and latent size of a latent-diffusion VAE, read from its tensor shapes."""
    def get(key: str) -> Tensor:
        if key not in sd:
            raise ValueError(f"{source}: missing key '{VAE_PREFIX}{key}'")
        return sd[key]

    in_channels = get("encoder.conv_in.weight").shape[1]
    if in_channels != 1:
        raise ValueError(f"{source}: '{VAE_PREFIX}encoder.conv_in.weight' takes {in_channels} channels; a mel VAE "
                         "takes 1 (not an AudioLDM first stage?)")
    n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    widths = tuple(get(f"encoder.down.{i}.block.0.conv1.weight").shape[0] for i in range(n_blocks))
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    z_channels = get("decoder.conv_in.weight").shape[1]
    embed_dim = get("post_quant_conv.weight").shape[0]
    if z_channels != embed_dim:
        raise ValueError(f"{source}: z_channels={z_channels} differs from embed_dim={embed_dim}; diffusers' "
                         "AutoencoderKL needs them equal")
    groups = 32  # latent-diffusion's Normalize() always uses 32 groups
    try:
        return MelVAEConfig(n_mels=mel.n_mels, mel=mel, latent_channels=int(embed_dim), block_out_channels=widths,
                            layers_per_block=int(layers), norm_num_groups=groups,
                            mid_block_add_attention=any(k.startswith("encoder.mid.attn_1.") for k in sd),
                            scaling_factor=scaling_factor)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def vae_state_dict(sd: Mapping[str, Tensor], source: str | os.PathLike, n_blocks: int) -> dict[str, Tensor]:
    """Rename a latent-diffusion VAE state dict (prefix stripped) to diffusers names; unknown key = error."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = vae_key(key, n_blocks)
        if new is None:
            raise ValueError(f"{source}: unexpected key '{VAE_PREFIX}{key}' (not part of an AudioLDM VAE; "
                             "attention inside down/up blocks is not supported)")
        if re.search(r"\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", new):
            if value.dim() != 4 or value.shape[2:] != (1, 1):
                raise ValueError(f"{source}: key '{VAE_PREFIX}{key}' has shape {list(value.shape)}, expected a "
                                 "1x1 conv [C, C, 1, 1]")
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = value
    return out


def split_checkpoint(checkpoint: Mapping[str, Any], source: str | os.PathLike
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor], float | None]:
    """(VAE keys, vocoder keys, scale_factor or None) of an AudioLDM checkpoint, prefixes stripped."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: 'state_dict' is a {type(state).__name__}, expected a dict of tensors")
    vae: dict[str, Tensor] = {}
    vocoder: dict[str, Tensor] = {}
    skipped = 0
    for key, value in state.items():
        if key.startswith(VOCODER_PREFIX):
            vocoder[key[len(VOCODER_PREFIX):]] = value
        elif key.startswith(VAE_PREFIX + "loss."):
            skipped += 1  # the VAE's training-only discriminator / LPIPS
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX):]] = value
    if skipped:
        log.info("%s: skipped %d first_stage_model.loss.* keys (training only)", source, skipped)
    if not vae:
        raise ValueError(f"{source}: no '{VAE_PREFIX}*' keys (not an AudioLDM checkpoint?)")
    if not vocoder:
        raise ValueError(f"{source}: no '{VOCODER_PREFIX}*' keys (this checkpoint carries no vocoder)")
    scale = state.get("scale_factor", checkpoint.get("scale_factor"))
    return vae, vocoder, None if scale is None else float(scale)


def load_audioldm_codec(
    source: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    sampling_rate: int = 16_000,
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2),
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
) -> MelLatentCodec:
    """An original AudioLDM `.ckpt` (or `.safetensors`) -> `MelLatentCodec` (float32, eval mode).

    Args:
        source: the checkpoint file.
        trust_pickle: allow full unpickling if `torch.load(weights_only=True)` refuses the file.
        sampling_rate, upsample_rates, resblock_dilation_sizes: the vocoder's settings that its
            weights do not record (defaults: every AudioLDM / MusicLDM release).
    """
    path = Path(source)
    checkpoint = read_state_dict(path, trust_pickle=trust_pickle)
    vae_sd, voc_sd, scale = split_checkpoint(checkpoint, path)

    # 1. vocoder: shapes give widths and kernels; the rates and dilations come from the arguments
    voc_state = generator_to_transformers(voc_sd, f"{path} [{VOCODER_PREFIX}*]")
    n_mels, c0 = voc_state["conv_pre.weight"].shape[1], voc_state["conv_pre.weight"].shape[0]
    kernels = []
    for i in range(len(upsample_rates)):
        key = f"upsampler.{i}.weight"
        if key not in voc_state:
            raise ValueError(f"{path}: missing key '{VOCODER_PREFIX}ups.{i}.weight' for {len(upsample_rates)} "
                             f"upsampling rates {upsample_rates}")
        kernels.append(voc_state[key].shape[-1])
    n_res = 1 + max(int(m.group(1)) for k in voc_state if (m := re.match(r"resblocks\.(\d+)\.", k)))
    n_kernels = n_res // len(upsample_rates)
    res_kernels = tuple(voc_state[f"resblocks.{j}.convs1.0.weight"].shape[-1] for j in range(n_kernels))
    try:
        voc_config = VocoderConfig(model_in_dim=n_mels, sampling_rate=sampling_rate, upsample_rates=upsample_rates,
                                   upsample_kernel_sizes=tuple(kernels), upsample_initial_channel=c0,
                                   resblock_kernel_sizes=res_kernels,
                                   resblock_dilation_sizes=tuple(resblock_dilation_sizes)[:n_kernels])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    vocoder = Vocoder(voc_config)
    check_state_dict(vocoder.hifigan.state_dict(), voc_state, f"{path} [{VOCODER_PREFIX}*]", what="vocoder")
    vocoder.hifigan.load_state_dict(voc_state, strict=True)

    # 2. VAE: architecture from shapes, keys renamed, 1x1 attention convs made linear
    if scale is None:
        log.warning("%s: no scale_factor in the checkpoint; using latent-diffusion's default %s", path,
                    LDM_DEFAULT_SCALE)
        scale = LDM_DEFAULT_SCALE
    vae_config = vae_config_from_state_dict(vae_sd, path, mel=voc_config.mel, scaling_factor=scale)
    vae = MelVAE(vae_config)
    state = vae_state_dict(vae_sd, path, len(vae_config.block_out_channels))
    check_state_dict(vae.autoencoder.state_dict(), state, f"{path} [{VAE_PREFIX}*]", what="VAE")
    vae.autoencoder.load_state_dict(state, strict=True)
    return MelLatentCodec(vae.eval(), vocoder.eval())


def convert_audioldm(source: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                     **vocoder_settings: Any) -> Path:
    """Convert an original AudioLDM checkpoint's VAE + vocoder into a `MelLatentCodec` folder at `out`."""
    codec = load_audioldm_codec(source, trust_pickle=trust_pickle, **vocoder_settings)
    log.info("converted %s: %s parameters", source, codec.num_parameters())
    return codec.save_pretrained(out)
