"""EnCodec checkpoints in and out of soundsmith's `NeuralCodec`.

In: an original facebookresearch/encodec state dict (`encodec_24khz-d7cc33bc.th`), or an audiocraft
compression checkpoint (`{"best_state": state_dict, "xp.cfg": ...}`, e.g. MusicGen's 32 kHz EnCodec),
is renamed into transformers' `EncodecModel` layout (which is `NeuralCodec`'s) and loaded strictly:
every key must be used and every model key filled, or a one-line error names the first that is not.

    original (SEANet in nn.Sequential)                    transformers / NeuralCodec
    encoder.model.{i}.conv.conv.weight_g                  encoder.layers.{i}.conv.parametrizations.weight.original0
    encoder.model.{i}.conv.conv.weight_v                  encoder.layers.{i}.conv.parametrizations.weight.original1
    encoder.model.{i}.block.{j}.conv.conv.bias            encoder.layers.{i}.block.{j}.conv.bias
    encoder.model.{i}.shortcut.conv.conv.*                encoder.layers.{i}.shortcut.conv.*
    encoder.model.{i}.conv.norm.* (48 kHz GroupNorm)      encoder.layers.{i}.norm.*
    encoder.model.{i}.lstm.weight_ih_l0                   encoder.layers.{i}.lstm.weight_ih_l0
    decoder.model.{i}.convtr.convtr.*                     decoder.layers.{i}.conv.*
    quantizer.vq.layers.{k}._codebook.{inited, cluster_size, embed, embed_avg}
                                                          quantizer.layers.{k}.codebook.{same}

The architecture comes from a transformers `config.json` beside the checkpoint (or passed as
`config`), else from the known published layouts, told apart by their weights (first-conv width,
codebook size, convolutional or identity skips): `encodec_24khz` and `encodec_32khz`.

Out: `export_transformers` writes a `NeuralCodec` as a transformers EnCodec folder (config.json,
model.safetensors with our codebooks in `EncodecModel`'s codebook buffers, preprocessor_config.json),
which `transformers.EncodecModel.from_pretrained` loads and decodes our codes with.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig
from soundsmith.core.files import read_json_object
from soundsmith.core.weights import check_state_dict, read_state_dict

log = logging.getLogger(__name__)

# The published layouts (transformers' convert_encodec_checkpoint_to_pytorch.py and encodec/model.py).
# The 48 kHz model is left out: its loudness normalisation and 1 s chunks need side information
# beside the codes, which the `encode -> codes` API does not carry.
PRESETS: dict[str, dict[str, Any]] = {
    "encodec_24khz": dict(sample_rate=24_000, upsampling_ratios=(8, 5, 4, 2), num_filters=32, hidden_size=128,
                          num_lstm_layers=2, use_causal_conv=True, use_conv_shortcut=True, codebook_size=1024,
                          n_levels=32, target_bandwidths=(1.5, 3.0, 6.0, 12.0, 24.0)),
    "encodec_32khz": dict(sample_rate=32_000, upsampling_ratios=(8, 5, 4, 4), num_filters=64, hidden_size=128,
                          num_lstm_layers=2, use_causal_conv=False, use_conv_shortcut=False, codebook_size=2048,
                          n_levels=4, target_bandwidths=(2.2,)),
}

# (pattern, replacement), applied in order to every key; a key no rule recognises is an error
_RULES = (
    (re.compile(r"^(encoder|decoder)\.model\.(\d+)\."), r"\1.layers.\2."),
    (re.compile(r"\.conv\.conv\."), ".conv."),  # SConv1d -> NormConv1d -> nn.Conv1d
    (re.compile(r"\.convtr\.convtr\."), ".conv."),  # SConvTranspose1d -> NormConvTranspose1d -> nn.ConvTranspose1d
    (re.compile(r"\.(?:conv|convtr)\.norm\."), ".norm."),  # time_group_norm (48 kHz)
    (re.compile(r"\.weight_g$"), ".parametrizations.weight.original0"),  # old weight_norm -> parametrization
    (re.compile(r"\.weight_v$"), ".parametrizations.weight.original1"),
    (re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\."), r"quantizer.layers.\1.codebook."),
)
_KNOWN = re.compile(r"^(?:(?:encoder|decoder)\.layers\.\d+\.(?:(?:block\.\d+\.|shortcut\.)?(?:conv|norm)\."
                    r"(?:weight|bias|parametrizations\.weight\.original[01])|lstm\.(?:weight|bias)_(?:ih|hh)_l\d+)"
                    r"|quantizer\.layers\.\d+\.codebook\.(?:inited|cluster_size|embed|embed_avg))$")


def original_to_transformers(state_dict: Mapping[str, Any], source: str | os.PathLike = "checkpoint"
                             ) -> dict[str, Any]:
    """Rename an original encodec/audiocraft EnCodec state dict into `EncodecModel` key names.

    Raises ValueError naming `source` and the first key that is not part of an EnCodec model.
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _RULES:
            new = pattern.sub(replacement, new)
        if new == key or not _KNOWN.match(new):
            raise ValueError(f"{source}: unexpected key {key!r} for an original EnCodec state dict "
                             "(expected encoder.model.*, decoder.model.*, quantizer.vq.layers.*)")
        if new in out:
            raise ValueError(f"{source}: keys collide after renaming: {new!r}")
        out[new] = value
    return out


def original_keys(codec: NeuralCodec) -> list[str]:
    """The keys an original encodec state dict of `codec`'s architecture has (the inverse renaming).

    Which modules are transposed convolutions comes from the model, so a checkpoint that names a
    decoder upsampling layer `conv.conv` (or an encoder layer `convtr.convtr`) is caught.
    """
    from transformers.models.encodec.modeling_encodec import EncodecConvTranspose1d

    kinds = {name: isinstance(m, EncodecConvTranspose1d) for name, m in codec.named_modules()}
    out = []
    for key in codec.state_dict():
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$", key)
        if m is None:  # quantizer.layers.{k}.codebook.X
            out.append(re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", key))
            continue
        side, index, rest = m.groups()
        module = f"{side}.layers.{index}"
        wrap = "convtr" if kinds.get(module) else "conv"
        rest = re.sub(r"parametrizations\.weight\.original0$", "weight_g", rest)
        rest = re.sub(r"parametrizations\.weight\.original1$", "weight_v", rest)
        rest = re.sub(r"^((?:block\.\d+\.|shortcut\.)?)conv\.", rf"\1{wrap}.{wrap}.", rest)
        rest = re.sub(r"^((?:block\.\d+\.|shortcut\.)?)norm\.", rf"\1{wrap}.norm.", rest)
        out.append(f"{side}.model.{index}.{rest}")
    return out


def _signature(state: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """What the weights tell about the layout: first-conv width, channels, codebooks, skips, LSTM."""
    first = state.get("encoder.layers.0.conv.parametrizations.weight.original1", state.get("encoder.layers.0.conv.weight"))
    embed = state.get("quantizer.layers.0.codebook.embed")
    if first is None or embed is None:
        raise ValueError(f"{source}: missing the first encoder convolution or the first codebook; not an EnCodec "
                         "state dict")
    return {"num_filters": int(first.shape[0]), "audio_channels": int(first.shape[1]),
            "codebook_size": int(embed.shape[0]), "hidden_size": int(embed.shape[1]),
            "use_conv_shortcut": any(".shortcut." in k for k in state),
            "n_levels": len({k.split(".")[2] for k in state if k.startswith("quantizer.layers.")}),
            "norm_type": "time_group_norm" if any(k.endswith(".norm.weight") for k in state) else "weight_norm"}


def infer_config(state: Mapping[str, Any], source: str | os.PathLike = "checkpoint") -> NeuralCodecConfig:
    """The published layout whose weights look like `state` (renamed), with its sample rate and causality."""
    sig = _signature(state, source)
    for name, preset in PRESETS.items():
        if all(preset.get(k, v) == v for k, v in sig.items() if k in ("num_filters", "codebook_size",
                                                                         "use_conv_shortcut", "hidden_size")):
            if sig["audio_channels"] == 1 and sig["norm_type"] == "weight_norm":
                log.info("%s looks like %s", source, name)
                return NeuralCodecConfig(**preset)
    raise ValueError(f"{source}: an EnCodec layout soundsmith does not know ({', '.join(f'{k}={v}' for k, v in sig.items())}"
                     f"; known: {', '.join(PRESETS)}); put its transformers config.json beside the checkpoint")


def _read_config(path: Path) -> NeuralCodecConfig:
    raw = read_json_object(path)
    if raw.get("_class_name") == "NeuralCodec":
        return NeuralCodecConfig.from_dict(raw)
    return NeuralCodecConfig.from_transformers(raw, path)


def load_encodec(source: str | os.PathLike, *, trust_pickle: bool = False,
                 config: str | os.PathLike | None = None) -> NeuralCodec:
    """An original encodec / audiocraft EnCodec checkpoint file -> `NeuralCodec` (float32, eval mode).

    Args:
        source: the checkpoint (`.th`, `.pt`, `.bin`, `.safetensors`).
        trust_pickle: allow full unpickling (audiocraft files hold an OmegaConf config beside the weights).
        config: a transformers EnCodec config.json for the architecture (default: a `config.json`
            beside the checkpoint, else the published layout the weights match).
    """
    path = Path(source)
    checkpoint = read_state_dict(path, trust_pickle=trust_pickle)
    if "best_state" in checkpoint:  # audiocraft: {"best_state": state_dict, "xp.cfg": ..., "version": ...}
        checkpoint = checkpoint["best_state"]
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{path}: 'best_state' is a {type(checkpoint).__name__}, expected a state dict")
    state = original_to_transformers(checkpoint, path)
    beside = path.parent / "config.json"
    if config is not None:
        cfg = _read_config(Path(config))
    elif beside.is_file():
        cfg = _read_config(beside)
    else:
        cfg = infer_config(state, path)
    codec = NeuralCodec(cfg)
    what = f"original EnCodec model ({cfg.sample_rate} Hz layout)"
    expected = original_keys(codec)  # strict in the checkpoint's own key names first
    missing = [k for k in expected if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in set(expected)]
    for found, word in ((missing, "missing"), (unexpected, "unexpected")):
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise ValueError(f"{path}: {word} key {found[0]!r}{more} for the {what} (wrong layout or config?)")
    check_state_dict(codec.state_dict(), state, path, what=what)  # then shapes
    codec.load_state_dict(state, strict=True)
    return codec.float().eval()


def convert_encodec(source: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                    config: str | os.PathLike | None = None) -> Path:
    """Convert an original EnCodec checkpoint into a soundsmith `NeuralCodec` folder at `out`; returns `out`."""
    codec = load_encodec(source, trust_pickle=trust_pickle, config=config)
    log.info("converted EnCodec %s: %d Hz, %d levels x %d codes", source, codec.sample_rate, codec.max_levels,
             codec.codebook_size)
    return codec.save_pretrained(out)


def export_transformers(codec: NeuralCodec | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write `codec` (or the codec folder) as a transformers EnCodec folder; returns `out`.

    The codebooks go into `EncodecModel`'s codebook buffers (`quantizer.layers.{k}.codebook.embed`),
    so `EncodecModel.from_pretrained(out).decode(codes[None], [None])` gives our `decode(codes)`.
    """
    from transformers import EncodecFeatureExtractor, EncodecModel

    if not isinstance(codec, NeuralCodec):
        codec = NeuralCodec.from_pretrained(codec)
    model = EncodecModel(codec.config.to_transformers())
    state = {k: v.detach().float().cpu() for k, v in codec.state_dict().items()}
    check_state_dict(model.state_dict(), state, "NeuralCodec", what="transformers EncodecModel")
    model.load_state_dict(state, strict=True)
    out = Path(out)
    model.save_pretrained(out)
    EncodecFeatureExtractor(feature_size=codec.channels, sampling_rate=codec.sample_rate).save_pretrained(out)
    return out
