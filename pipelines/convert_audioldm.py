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

from soundsmith.codecs.jik876 import generator_to_transformers
from soundsmith.codecs.mel import MelConfig
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig
from soundsmith.core.weights import check_state_dict, read_state_dict
from torch import Tensor

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
    checkpoint: Mapping[str, Any] | None = None,
) -> MelLatentCodec:
    """An original AudioLDM `.ckpt` (or `.safetensors`) -> `MelLatentCodec` (float32, eval mode).

    Args:
        source: the checkpoint file.
        trust_pickle: allow full unpickling if `torch.load(weights_only=True)` refuses the file.
        sampling_rate, upsample_rates, resblock_dilation_sizes: the vocoder's settings that its
            weights do not record (defaults: every AudioLDM / MusicLDM release).
        checkpoint: the checkpoint's contents if already read (a 2-3 GB file is then not read twice).
    """
    path = Path(source)
    if checkpoint is None:
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
                     tokenizer: str | os.PathLike | None = None, **settings: Any) -> Path:
    """Convert an original AudioLDM checkpoint at `out`: a whole checkpoint (UNet, CLAP, VAE, vocoder)
    becomes a latent-diffusion pipeline folder (`load_pipeline` loads it); one holding only the first
    stage becomes a `MelLatentCodec` folder (`vae/`, `vocoder/`).

    Args:
        tokenizer: folder with the CLAP's RoBERTa tokenizer (laion/clap-htsat-unfused: vocab.json +
            merges.txt, or tokenizer.json), which AudioLDM checkpoints do not carry; default: a
            `tokenizer/` folder beside the checkpoint, or those files beside it.
        settings: `extract_ema`, `num_head_channels`, `sample_size`, `prediction_type` (UNet) and the
            vocoder settings of `load_audioldm_codec`.
    """
    path = Path(source)
    checkpoint = read_state_dict(path, trust_pickle=trust_pickle)
    state = checkpoint.get("state_dict", checkpoint)
    unet_settings = {k: settings.pop(k) for k in ("extract_ema", "num_head_channels", "sample_size",
                                                    "prediction_type") if k in settings}
    codec = load_audioldm_codec(path, checkpoint=checkpoint, **settings)
    if not isinstance(state, Mapping) or f"{UNET_PREFIX}time_embed.0.weight" not in state:
        log.info("converted %s (first stage only): %s parameters", source, codec.num_parameters())
        return codec.save_pretrained(out)
    pipe = load_audioldm_pipeline(path, checkpoint=checkpoint, codec=codec, tokenizer=tokenizer, **unet_settings)
    log.info("converted %s: UNet %.1f M parameters, CLAP, VAE and vocoder", source,
             sum(p.numel() for p in pipe.unet.parameters()) / 1e6)
    return pipe.save_pretrained(out)


# ---------------------------------------------------------------- UNet and CLAP (latent-diffusion issue)
#
# The UNet is latent-diffusion's openaimodel `UNetModel` under `model.diffusion_model.` (its EMA copy
# under `model_ema.` with the dots of the names removed). Renames, as diffusers' AudioLDM conversion
# script does them (written here from the two architectures; L = layers per level):
#     time_embed.0 / .2                   -> time_embedding.linear_1 / linear_2
#     film_emb                            -> class_embedding   (the 512-d CLAP "FiLM" projection)
#     input_blocks.0.0 / out.0 / out.2    -> conv_in / conv_norm_out / conv_out
#     input_blocks.I.0 (resnet)           -> down_blocks.B.resnets.J, B = (I-1) // (L+1), J = (I-1) % (L+1)
#     input_blocks.I.0.op                 -> down_blocks.B.downsamplers.0.conv
#     input_blocks.I.1 (SpatialTransformer) -> down_blocks.B.attentions.J   (inner names are diffusers')
#     middle_block.0 / .1 / .2            -> mid_block.resnets.0 / attentions.0 / resnets.1
#     output_blocks.I.0 / .1 (attention)  -> up_blocks.B.resnets.J / attentions.J, B = I // (L+1)
#     output_blocks.I.{1,2}.conv          -> up_blocks.B.upsamplers.0.conv
#     resnet in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection
#                                         -> norm1/conv1, time_emb_proj, norm2/conv2, conv_shortcut
# The CLAP is a laion_clap model under `cond_stage_model.model.`: renamed by `convert_laion_clap`
# into a transformers ClapModel when it has its audio tower (which then re-ranks candidates, as
# AudioLDM does), else into a ClapTextModelWithProjection (as diffusers' script keeps only the text).

UNET_PREFIX = "model.diffusion_model."
CLAP_PREFIX = "cond_stage_model.model."
_UNET_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "film_emb": "class_embedding", "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out",
             "out.2": "conv_out"}
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESNET_TAIL = re.compile(r"(in_layers\.[02]|emb_layers\.1|out_layers\.[03]|skip_connection)\.(weight|bias)")


def _resnet(prefix: str, tail: str) -> str | None:
    m = _RESNET_TAIL.fullmatch(tail)
    return f"{prefix}.{_UNET_RESNET[m.group(1)]}.{m.group(2)}" if m else None


def unet_key(key: str, layers_per_block: int) -> str | None:
    """One openaimodel UNet key (prefix stripped) -> its diffusers name; None if it is not a UNet key."""
    step = layers_per_block + 1
    m = re.fullmatch(r"(time_embed\.[02]|film_emb|input_blocks\.0\.0|out\.[02])\.(weight|bias)", key)
    if m:
        return f"{_UNET_TOP[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", key)
    if m:
        i, j, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        b, layer = (i - 1) // step, (i - 1) % step
        if j == 0 and tail.startswith("op."):
            return f"down_blocks.{b}.downsamplers.0.conv.{tail[3:]}"
        if j == 0:
            return _resnet(f"down_blocks.{b}.resnets.{layer}", tail)
        return f"down_blocks.{b}.attentions.{layer}.{tail}"
    m = re.fullmatch(r"middle_block\.([012])\.(.+)", key)
    if m:
        if m.group(1) == "1":
            return f"mid_block.attentions.0.{m.group(2)}"
        return _resnet(f"mid_block.resnets.{int(m.group(1)) // 2}", m.group(2))
    m = re.fullmatch(r"output_blocks\.(\d+)\.([012])\.(.+)", key)
    if m:
        i, j, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        b, layer = i // step, i % step
        if j == 0:
            return _resnet(f"up_blocks.{b}.resnets.{layer}", tail)
        if re.fullmatch(r"conv\.(weight|bias)", tail):
            return f"up_blocks.{b}.upsamplers.0.{tail}"
        return f"up_blocks.{b}.attentions.{layer}.{tail}"
    return None


def unet_config_from_state_dict(sd: Mapping[str, Tensor], source: str | os.PathLike, *, num_head_channels: int = 32,
                                sample_size: int = 128) -> dict[str, Any]:
    """`UNet2DConditionModel` arguments read off an openaimodel UNet's shapes (prefix stripped).

    What shapes cannot tell: the attention head width (`num_head_channels`: 32 for AudioLDM-S/M, 64 for
    -L) and `sample_size` (latent frames of the default length; 128 = 5.12 s as diffusers' AudioLDM).
    """
    def get(key: str) -> Tensor:
        if key not in sd:
            raise ValueError(f"{source}: missing key '{UNET_PREFIX}{key}'")
        return sd[key]

    n_in = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    downs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    levels = len(downs) + 1
    resnets = n_in - 1 - len(downs)  # conv_in, then L resnets per level and a downsampler below all but the last
    if resnets % levels or resnets < levels:
        raise ValueError(f"{source}: {n_in} input blocks do not form {levels} levels of resnets + downsampler")
    layers = resnets // levels
    step = layers + 1
    widths, attention, context = [], [], []
    for b in range(levels):
        first = 1 + b * step
        widths.append(get(f"input_blocks.{first}.0.out_layers.3.weight").shape[0])
        has_attn = any(k.startswith(f"input_blocks.{first}.1.") for k in sd)
        attention.append(has_attn)
        if has_attn:
            context.append(get(f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight").shape[1])
    if any(k.startswith("input_blocks.") and ".transformer_blocks.1." in k for k in sd):
        raise ValueError(f"{source}: attention blocks with several transformer layers are not supported")
    self_only = all(c == w for c, w in zip(context, [w for w, a in zip(widths, attention) if a]))
    if not self_only and len(set(context)) != 1:
        raise ValueError(f"{source}: attention context widths {context} are neither the block widths nor one size")
    film = get("film_emb.weight")  # [T', D]
    time_dim = get("time_embed.2.weight").shape[0]
    emb_in = get("input_blocks.1.0.emb_layers.1.weight").shape[1]
    if emb_in not in (time_dim, time_dim + film.shape[0]):
        raise ValueError(f"{source}: resnet embedding width {emb_in} is neither {time_dim} nor {time_dim + film.shape[0]}")
    return dict(
        sample_size=sample_size,
        in_channels=get("input_blocks.0.0.weight").shape[1],
        out_channels=get("out.2.weight").shape[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        mid_block_type="UNetMidBlock2DCrossAttn" if any(k.startswith("middle_block.1.") for k in sd)
        else "UNetMidBlock2D",
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        cross_attention_dim=tuple(widths) if self_only else context[0],
        attention_head_dim=tuple(max(1, w // num_head_channels) for w in widths),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=film.shape[1],
        class_embeddings_concat=emb_in != time_dim,
    )


def unet_from_checkpoint(state: Mapping[str, Any], source: str | os.PathLike, *, extract_ema: bool = False,
                         num_head_channels: int = 32, sample_size: int = 128) -> Any:
    """The diffusers `UNet2DConditionModel` of an AudioLDM checkpoint (float32, eval mode)."""
    from diffusers import UNet2DConditionModel

    keys = [k for k in state if k.startswith(UNET_PREFIX)]
    if extract_ema:
        flat = {k: "model_ema." + "".join(k.split(".")[1:]) for k in keys}
        missing = [v for v in flat.values() if v not in state]
        if missing:
            raise ValueError(f"{source}: extract_ema: no EMA copy {missing[0]!r} of the UNet")
        sd = {k[len(UNET_PREFIX):]: state[flat[k]] for k in keys}
    else:
        sd = {k[len(UNET_PREFIX):]: state[k] for k in keys}
    config = unet_config_from_state_dict(sd, source, num_head_channels=num_head_channels, sample_size=sample_size)
    layers = config["layers_per_block"]
    renamed: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = unet_key(key, layers)
        if new is None:
            raise ValueError(f"{source}: unexpected key '{UNET_PREFIX}{key}' (not part of an AudioLDM UNet)")
        renamed[new] = value
    unet = UNet2DConditionModel(**config)
    check_state_dict(unet.state_dict(), renamed, f"{source} [{UNET_PREFIX}*]", what="UNet")
    unet.load_state_dict(renamed, strict=True)
    return unet.eval()


def clap_from_checkpoint(state: Mapping[str, Any], source: str | os.PathLike, tokenizer: Any) -> Any:
    """The CLAP under `cond_stage_model.model.` -> `ClapConditioner` (null condition: the embedding of "")."""
    from soundsmith.gen.clap import TransformersClap
    from soundsmith.gen.conditioners import ClapConditioner
    from transformers import ClapFeatureExtractor, ClapModel, ClapTextConfig, ClapTextModelWithProjection

    from .convert_laion_clap import OPTIONAL_TARGETS, infer_clap_config, rename_laion_keys

    sub = {k[len(CLAP_PREFIX):]: v for k, v in state.items() if k.startswith(CLAP_PREFIX)}
    if "text_branch.embeddings.word_embeddings.weight" not in sub:
        raise ValueError(f"{source}: no CLAP text branch under '{CLAP_PREFIX}' (not an AudioLDM checkpoint?)")
    with_audio = "audio_branch.patch_embed.proj.weight" in sub
    if not with_audio:  # text only: the audio tower's keys are absent
        sub = {k: v for k, v in sub.items() if not k.startswith(("audio_", "logit_scale"))}
    try:
        renamed = rename_laion_keys(sub)
    except ValueError as err:
        raise ValueError(f"{source} [{CLAP_PREFIX}*]: {err}") from None
    if with_audio:
        config = infer_clap_config(sub)
        model = ClapModel(config).eval()
    else:
        words = sub["text_branch.embeddings.word_embeddings.weight"]
        n_layers = len({m.group(1) for k in sub if (m := re.match(r"text_branch\.encoder\.layer\.(\d+)\.", k))})
        model = ClapTextModelWithProjection(ClapTextConfig(
            vocab_size=words.shape[0], hidden_size=words.shape[1], num_hidden_layers=n_layers,
            num_attention_heads=max(1, words.shape[1] // 64),
            intermediate_size=sub["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=sub["text_branch.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=sub["text_branch.embeddings.token_type_embeddings.weight"].shape[0],
            projection_dim=sub["text_projection.0.weight"].shape[0])).eval()
        renamed = {k: v for k, v in renamed.items() if not k.startswith("logit_scale")}
    own = model.state_dict()
    optional = [k for k in own if k not in renamed and any(p.search(k) for p in OPTIONAL_TARGETS)]
    expected = {k: v for k, v in own.items() if k not in optional}
    check_state_dict(expected, renamed, f"{source} [{CLAP_PREFIX}*]", what="CLAP")
    model.load_state_dict(renamed, strict=False)  # strictness checked above; rebuilt buffers stay
    if with_audio:
        fused = bool(model.config.audio_config.enable_fusion)
        fe = ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc")
        return ClapConditioner(TransformersClap(model, fe, tokenizer, source=str(source)),
                               null_condition="empty_text")
    return ClapConditioner(model, tokenizer=tokenizer, null_condition="empty_text")


def find_tokenizer(source: Path, tokenizer: str | os.PathLike | None) -> Any:
    """The RoBERTa tokenizer of the CLAP (AudioLDM checkpoints do not carry one)."""
    from transformers import AutoTokenizer, RobertaTokenizer

    candidates = [Path(tokenizer)] if tokenizer is not None else [source.parent / "tokenizer", source.parent]
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return RobertaTokenizer.from_pretrained(str(folder), local_files_only=True)  # laion_clap's files
    where = candidates[0] if tokenizer is not None else f"{source.parent}/tokenizer/ or {source.parent}"
    raise FileNotFoundError(f"{source}: AudioLDM checkpoints carry no tokenizer; put the RoBERTa tokenizer of "
                            f"laion/clap-htsat-unfused (vocab.json + merges.txt, or tokenizer.json) in {where}")


def load_audioldm_pipeline(source: str | os.PathLike, *, trust_pickle: bool = False,
                           tokenizer: str | os.PathLike | None = None, extract_ema: bool = False,
                           num_head_channels: int = 32, sample_size: int = 128, prediction_type: str = "epsilon",
                           checkpoint: Mapping[str, Any] | None = None, codec: MelLatentCodec | None = None,
                           **vocoder_settings: Any) -> Any:
    """A whole original AudioLDM checkpoint -> `LDMPipeline` (float32, CPU).

    Args:
        tokenizer: see `convert_audioldm`.
        extract_ema: take the UNet's EMA weights (`model_ema.*`) instead of the raw ones.
        num_head_channels: attention head width (32: AudioLDM-S/M; 64: AudioLDM-L).
        sample_size: latent frames of the default length (128 = 5.12 s).
        prediction_type: "epsilon" (AudioLDM) or "v_prediction" (checkpoints trained with parameterization v).
    """
    from .ldm import LDMPipeline, audioldm_config

    path = Path(source)
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if checkpoint is None:
        checkpoint = read_state_dict(path, trust_pickle=trust_pickle)
    state = checkpoint.get("state_dict", checkpoint)
    if codec is None:
        codec = load_audioldm_codec(path, checkpoint=checkpoint, **vocoder_settings)
    if f"{UNET_PREFIX}time_embed.0.weight" not in state:
        raise ValueError(f"{path}: no '{UNET_PREFIX}*' UNet (a first-stage-only checkpoint: convert_audioldm "
                         "writes it as a codec folder)")
    unet = unet_from_checkpoint(state, path, extract_ema=extract_ema, num_head_channels=num_head_channels,
                                sample_size=sample_size)
    conditioner = clap_from_checkpoint(state, path, find_tokenizer(path, tokenizer))
    # latent-diffusion's DDPM schedule (AudioLDM: 1000 steps, scaled-linear 0.0015 -> 0.0195), as diffusers'
    # conversion script builds its DDIMScheduler
    schedule = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195,
                "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
                "prediction_type": prediction_type}
    config = audioldm_config("AudioLDMPipeline", unet, codec, schedule, source=f"audioldm-ckpt:{path.name}")
    return LDMPipeline(unet, codec, conditioner, schedule, config, name_or_path=str(path))
