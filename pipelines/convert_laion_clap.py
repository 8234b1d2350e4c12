"""Original `laion_clap` checkpoint (LAION-AI/CLAP `.pt`) -> transformers `ClapModel` folder.

The published files (`630k-audioset-best.pt`, `music_audioset_epoch_15_esc_90.14.pt`, ...) hold
`{"state_dict": {"module.text_branch.*": ..., "module.audio_branch.*": ..., ...}}`: a RoBERTa text
branch (Hugging Face `RobertaModel` names already), an HTSAT audio branch (Swin names: `attn.qkv`,
`norm1`, `mlp.fc1`, ...), two `nn.Sequential` projections and the two logit scales. transformers
renames them (its `convert_clap_original_pytorch_to_hf.py` does it through the laion_clap package);
we rename the state dict directly, so neither laion_clap nor its torchlibrosa front-end is needed:

    text_branch.X                          -> text_model.X
    {text,audio}_projection.{0,2}.X        -> {text,audio}_projection.linear{1,2}.X
    audio_branch.bn0.X                     -> audio_model.audio_encoder.batch_norm.X
    audio_branch.layers.i.blocks.j.norm1   -> ....blocks.j.layernorm_before   (norm2 -> layernorm_after)
    ...attn.qkv.{weight,bias}              -> ...attention.self.{query,key,value}  (split in q, k, v order)
    ...attn.proj / attn.relative_position_* -> ...attention.output.dense / attention.self.relative_position_*
    ...mlp.fc1 / mlp.fc2                   -> ...intermediate.dense / output.dense
    audio_branch.X (patch_embed, downsample, norm) -> audio_model.audio_encoder.X

Dropped, because transformers' ClapModel has no such parts: the torchlibrosa STFT/mel weights
(`ClapFeatureExtractor` computes the mel), the AudioSet head (`tscam_conv`, `head`), the Swin
`attn_mask` buffers (recomputed), and the training-only `text_transform` / `audio_transform` MLPs.
Any other key is an error, so an unsupported variant (CLIP-style text transformer, 1-D fusion)
fails instead of loading half a model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Keys of the original checkpoint that transformers' ClapModel does not have (see module docstring).
DROPPED = (
    re.compile(r"^audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\."),
    re.compile(r"^audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$"),
    re.compile(r"^(text_transform|audio_transform)\."),
    re.compile(r"^attn_mask$"),
)
# Keys transformers' ClapModel may lack in a checkpoint: buffers it rebuilds itself.
OPTIONAL_TARGETS = (
    re.compile(r"^text_model\.embeddings\.(position_ids|token_type_ids)$"),
    re.compile(r"\.relative_position_index$"),
    re.compile(r"\.num_batches_tracked$"),
)
_BLOCK = r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\."
_AUDIO_RULES = (  # (pattern on the original key, replacement); applied to audio_branch keys in order
    (re.compile(_BLOCK + r"norm1\."), r"\1.layernorm_before."),
    (re.compile(_BLOCK + r"norm2\."), r"\1.layernorm_after."),
    (re.compile(_BLOCK + r"attn\.proj\."), r"\1.attention.output.dense."),
    (re.compile(_BLOCK + r"attn\.(relative_position_bias_table|relative_position_index)$"), r"\1.attention.self.\2"),
    (re.compile(_BLOCK + r"mlp\.fc1\."), r"\1.intermediate.dense."),
    (re.compile(_BLOCK + r"mlp\.fc2\."), r"\1.output.dense."),
    (re.compile(r"^audio_branch\.bn0\."), "batch_norm."),
    (re.compile(r"^audio_branch\.((patch_embed|norm|layers\.\d+\.downsample)\..*)$"), r"\1"),
)
_QKV = re.compile(_BLOCK + r"attn\.qkv\.(weight|bias)$")
_PROJECTION = re.compile(r"^(text|audio)_projection\.([02])\.(weight|bias)$")


def load_laion_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a laion_clap checkpoint (`.pt`/`.ckpt`/`.bin` or `.safetensors`) -> flat state dict without
    the DistributedDataParallel `module.` prefix. Pickles are refused unless `trust_pickle`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"laion_clap checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
        except Exception as err:  # torch raises UnpicklingError/RuntimeError with multi-line text
            message = " ".join(str(err).split())[:200]
            hint = "" if trust_pickle else "; if you trust the file, pass --trust-pickle"
            raise ValueError(f"{path}: cannot read the checkpoint safely ({message}){hint}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a laion_clap checkpoint (expected a state dict of tensors, "
                         "optionally under 'state_dict')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def rename_laion_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Original laion_clap keys -> transformers `ClapModel` keys (module docstring has the table)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if any(p.search(key) for p in DROPPED):
            continue
        if key in ("logit_scale_a", "logit_scale_t"):
            out[key] = value
        elif key.startswith("text_branch."):
            out["text_model." + key.removeprefix("text_branch.")] = value
        elif m := _PROJECTION.match(key):
            out[f"{m.group(1)}_projection.linear{1 if m.group(2) == '0' else 2}.{m.group(3)}"] = value
        elif m := _QKV.match(key):
            # Swin's qkv Linear stacks q, k, v along its output rows (HTSAT reshapes it as [3, heads, d]).
            prefix = f"audio_model.audio_encoder.{m.group(1)}.attention.self"
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{m.group(2)}"] = part.clone()
        elif key.startswith("audio_branch."):
            for pattern, repl in _AUDIO_RULES:
                if pattern.search(key):
                    out["audio_model.audio_encoder." + pattern.sub(repl, key, count=1)] = value
                    break
            else:
                raise ValueError(f"unsupported laion_clap audio key {key!r} (only HTSAT with 2-D fusion "
                                 "or none converts to transformers' ClapModel)")
        else:
            raise ValueError(f"unsupported laion_clap key {key!r} (only the RoBERTa text branch and the HTSAT "
                             "audio branch convert to transformers' ClapModel)")
    return out


def infer_clap_config(state: dict[str, Tensor]) -> Any:
    """A transformers `ClapConfig` read off the tensor shapes of an original laion_clap state dict.

    What shapes cannot tell takes the LAION value: patch stride 4, text heads = hidden // 64 (RoBERTa),
    spec_size 256 unless a Swin `attn_mask` gives the patch grid.
    """
    from transformers import ClapConfig

    def need(key: str) -> Tensor:
        if key not in state:
            raise ValueError(f"not a laion_clap HTSAT + RoBERTa checkpoint: missing key {key!r}")
        return state[key]

    proj = need("audio_branch.patch_embed.proj.weight")  # [C, in, p, p]
    blocks: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(r"^audio_branch\.layers\.(\d+)\.blocks\.(\d+)\.", key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks:
        raise ValueError("not a laion_clap HTSAT checkpoint: no audio_branch.layers.*.blocks.* keys")
    depths = [len(blocks[i]) for i in sorted(blocks)]
    tables = [need(f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table") for i in sorted(blocks)]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    embed = proj.shape[0]
    spec_size = 256
    mask_key = "audio_branch.layers.0.blocks.1.attn_mask"  # [num_windows, w*w, w*w] of the first stage
    if mask_key in state:
        spec_size = math.isqrt(state[mask_key].shape[0]) * window * 4
    fc1 = need("audio_branch.layers.0.blocks.0.mlp.fc1.weight")
    fused = any(k.startswith("audio_branch.patch_embed.fusion_model.") for k in state)
    audio = {
        "patch_embeds_hidden_size": embed,
        "depths": depths,
        "num_attention_heads": [t.shape[1] for t in tables],
        "window_size": window,
        "num_mel_bins": need("audio_branch.bn0.weight").shape[0],
        "spec_size": spec_size,
        "patch_size": proj.shape[-1],
        "patch_stride": [4, 4],
        "hidden_size": need("audio_projection.0.weight").shape[1],
        "mlp_ratio": fc1.shape[0] / embed,
        "enable_fusion": fused,
        "fusion_type": "aff_2d" if fused else None,
    }
    words = need("text_branch.embeddings.word_embeddings.weight")  # [V, H]
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^text_branch\.encoder\.layer\.(\d+)\.", k))}
    text = {
        "vocab_size": words.shape[0],
        "hidden_size": words.shape[1],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, words.shape[1] // 64),
        "intermediate_size": need("text_branch.encoder.layer.0.intermediate.dense.weight").shape[0],
        "max_position_embeddings": need("text_branch.embeddings.position_embeddings.weight").shape[0],
        "type_vocab_size": need("text_branch.embeddings.token_type_embeddings.weight").shape[0],
    }
    return ClapConfig(text_config=text, audio_config=audio,
                      projection_dim=need("text_projection.0.weight").shape[0])


def convert_laion_clap(source: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                       config: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None) -> Path:
    """Convert an original laion_clap checkpoint into a transformers ClapModel folder at `out`.

    Args:
        source: the `.pt` file (or `.safetensors`), or a folder holding exactly one such file.
        out: output folder (created); gets config.json, model.safetensors, the feature extractor config
            and, if found, the tokenizer.
        trust_pickle: allow full unpickling (the published `.pt` files need it: they pickle numpy
            scalars beside the weights). Default False reads with `weights_only=True`.
        config: a transformers ClapConfig (folder or config.json) to use instead of inferring it from
            the tensor shapes (needed when the text branch's head count is not hidden_size / 64).
        tokenizer: folder with the RoBERTa tokenizer (vocab.json + merges.txt, or tokenizer.json); by
            default taken from `source`'s folder if present. Without one, audio embedding works and text
            embedding raises until the files are copied in.
    Returns the output folder.
    """
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    source = Path(source)
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.suffix in (".pt", ".ckpt", ".bin", ".safetensors"))
        if len(found) != 1:
            raise ValueError(f"{source}: expected exactly one .pt/.ckpt/.bin/.safetensors file, found {len(found)}")
        source = found[0]
    state = load_laion_state_dict(source, trust_pickle=trust_pickle)
    if config is not None:
        config_path = Path(config) / "config.json" if Path(config).is_dir() else Path(config)
        if not config_path.is_file():
            raise FileNotFoundError(f"ClapConfig not found: {config_path}")
        hf_config = ClapConfig.from_pretrained(str(config_path))
    else:
        hf_config = infer_clap_config(state)
    converted = rename_laion_keys(state)
    model = ClapModel(hf_config).eval()
    own = model.state_dict()
    missing = [k for k in own if k not in converted and not any(p.search(k) for p in OPTIONAL_TARGETS)]
    unexpected = [k for k in converted if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ValueError(f"{source}: converted weights do not fit transformers' ClapModel ({what}; "
                         f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in converted.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the config expects "
                             f"{tuple(own[key].shape)} (pass config= with the right sizes)")
    model.load_state_dict(converted, strict=False)  # strictness checked above; rebuilt buffers stay

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    fused = bool(hf_config.audio_config.enable_fusion)
    ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc").save_pretrained(str(out))
    tok_dir = Path(tokenizer) if tokenizer is not None else source.parent
    if (tok_dir / "tokenizer.json").is_file() or (tok_dir / "vocab.json").is_file():
        files = [f for f in ("vocab.json", "merges.txt", "tokenizer.json") if (tok_dir / f).is_file()]
        if (tok_dir / "tokenizer_config.json").is_file():
            AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True).save_pretrained(str(out))
        else:  # bare vocab.json + merges.txt: RoBERTa's files, as laion_clap downloads them
            for name in files:
                shutil.copyfile(tok_dir / name, out / name)
            (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}) + "\n")
    elif tokenizer is not None:
        raise FileNotFoundError(f"no tokenizer files (vocab.json + merges.txt or tokenizer.json) in {tok_dir}")
    else:
        log.warning("%s: no RoBERTa tokenizer next to the checkpoint; text embedding needs vocab.json and "
                    "merges.txt copied into %s", source, out)
    return out
