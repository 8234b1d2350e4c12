"""LoRA adapters for the generative models (the UNet, the token LMs), built on peft.

A LoRA adapter adds to each targeted layer a low-rank update: a layer `W x` becomes
`W x + scale * (alpha / rank) * B A x` with `A: rank x in`, `B: out x rank` (for a convolution, `A` is a
convolution of the layer's kernel into `rank` channels and `B` a 1x1 convolution back). `B` starts at zero, so
a fresh adapter leaves the model's output as it was. Training an adapter trains `A` and `B` only:

    unet = add_lora(unet, rank=8)                 # the component's default targets (DEFAULT_TARGETS)
    ... train: only parameters with "lora_" in their name require grad ...
    save_adapter(unet, "runs/x/export", base_fingerprint=fp, base_model="models/default-ldm")
    unet = load_adapter(fresh_unet, "runs/x/export", scale=1.0)      # refuses an adapter for another base
    plain = merge_adapter(unet)                   # weights W + scale * (alpha / rank) * B A, no adapter layers

The adapter folder is peft's own format, as `PeftModel.save_pretrained` writes it (`adapter_config.json`,
`adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight`, so
`peft.PeftModel.from_pretrained(model, folder)` loads it too), plus `soundsmith_adapter.json`:

    {"format": "soundsmith-adapter/1", "component": "unet" | "semantic_lm" | "coarse_lm" | "fine_lm",
     "base_fingerprint": <core.weights.weights_fingerprint of the component without the adapter>,
     "base_model": <the model folder it was trained from>, "lora_rank": r, "lora_alpha": a, "targets": [...], ...}

The adapter layers are injected into the model in place (`peft.inject_adapter_in_model`), so a UNet stays a
`UNet2DConditionModel` and an LM a `TokenLM` for the code that calls them.

Default targets, the layers that can learn a timbre (`DEFAULT_TARGETS`; names as peft matches them: a module
whose name is the target or ends in "." + target):
    unet: the ResNet convolutions `conv1`, `conv2` and their `time_emb_proj`, the attention projections
          `to_q`, `to_k`, `to_v`, `to_out.0` (the shipped UNet has attention only in its mid block) and the
          CLAP condition's projection `class_embedding`;
    LMs:  each block's fused attention input `attn.qkv` and output `attn.proj`, and its MLP `fc` and `out`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "soundsmith-adapter/1"
CONFIG_FILE = "adapter_config.json"  # peft's names
WEIGHTS_FILE = "adapter_model.safetensors"
INFO_FILE = "soundsmith_adapter.json"
PEFT_PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained writes
ADAPTER_NAME = "default"  # peft's name of a model's first adapter

COMPONENTS = ("unet", "semantic_lm", "coarse_lm", "fine_lm")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "unet": ("conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0", "class_embedding"),
    "lm": ("attn.qkv", "attn.proj", "fc", "out"),
}
# layer types peft's LoRA adapts that our models call through their forward (embedding tables are not offered:
# the token LMs' tables and their projections double as the tied output heads, read by weight, not by call)
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


# ------------------------------------------------------------------------------------------ what a model is


def component_of(model: nn.Module) -> str:
    """The component name an adapter of `model` records: "unet", or "<stage>_lm" for a token LM."""
    from soundsmith.gen.token_lm import TokenLM

    if isinstance(model, TokenLM):
        return f"{model.stage}_lm"
    if type(model).__name__ == "UNet2DConditionModel":
        return "unet"
    raise TypeError(f"no LoRA support for a {type(model).__name__} (components: {', '.join(COMPONENTS)})")


def default_targets(component: str) -> tuple[str, ...]:
    """The default LoRA targets of a component ("unet", "semantic_lm", ...)."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (components: {', '.join(COMPONENTS)})")
    return DEFAULT_TARGETS["unet" if component == "unet" else "lm"]


def _matches(key: str, target: str) -> bool:
    """peft's rule for a `target_modules` list entry: the module's name is the target or ends in "." + target."""
    return key == target or key.endswith("." + target)


def _layer_names(model: nn.Module, *, tied: bool = False) -> list[str]:
    """Names of the layers a LoRA can adapt (base layers under their plain names when adapters are in); with
    `tied`, instead, the layers of that type it must not touch: a token LM's layers outside its blocks (the
    embeddings' projections, whose weight its tied output heads also read directly)."""
    from soundsmith.gen.token_lm import TokenLM

    inside = (lambda key: key.startswith("blocks.")) if isinstance(model, TokenLM) else (lambda key: True)
    names = []
    for key, module in model.named_modules():
        if ".lora_" in key or key.endswith(".base_layer"):
            continue
        if isinstance(module, ADAPTABLE) or _is_tuner_layer(module):
            if inside(key) != tied:
                names.append(key)
    return names


def check_targets(model: nn.Module, targets: Iterable[str] | None = None) -> tuple[str, ...]:
    """`targets` (default: the component's `DEFAULT_TARGETS`), each of which must name at least one adaptable
    layer of `model`; otherwise a one-line ValueError listing a few valid names."""
    component = component_of(model)
    wanted = tuple(default_targets(component) if targets is None else (t.strip() for t in targets))
    wanted = tuple(t for t in wanted if t)
    if not wanted:
        raise ValueError("LoRA targets: give at least one module name")
    layers, tied = _layer_names(model), _layer_names(model, tied=True)
    for target in wanted:
        if not any(_matches(key, target) for key in layers):
            raise ValueError(f"LoRA target {target!r} names no layer of the {component} that LoRA can adapt; valid "
                             f"names include {', '.join(valid_target_examples(model))}")
        clash = next((key for key in tied if _matches(key, target)), None)
        if clash is not None:
            raise ValueError(f"LoRA target {target!r} also names {clash}, whose weight the {component}'s tied output "
                             f"head reads directly (an adapter there would not merge); name the block layers, e.g. "
                             f"{', '.join(default_targets(component))}")
    return wanted


def valid_target_examples(model: nn.Module, limit: int = 10) -> list[str]:
    """A few target names that `model` accepts: its defaults, then the short names of its other layers."""
    seen: dict[str, None] = dict.fromkeys(default_targets(component_of(model)))
    for key in _layer_names(model):
        parts = key.split(".")
        short = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        seen.setdefault(short, None)
    return list(seen)[:limit]


# ------------------------------------------------------------------------------------------------ adding


def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def has_lora(model: nn.Module) -> bool:
    """Whether adapter layers are injected in `model`."""
    return any(_is_tuner_layer(m) for m in model.modules())


def add_lora(model: nn.Module, rank: int, targets: Iterable[str] | None = None, alpha: float | None = None, *,
             dropout: float = 0.0) -> nn.Module:
    """Inject a fresh LoRA adapter (B = 0: the output is unchanged) into `model` in place and return it, with
    only the adapter's parameters requiring grad.

    Args:
        model: a UNet2DConditionModel or a TokenLM (without an adapter).
        rank: the rank r >= 1 of each update.
        targets: module names (peft `target_modules`); None: the component's `DEFAULT_TARGETS`.
        alpha: LoRA alpha; the update is scaled by alpha / rank (default alpha = rank: scale 1).
        dropout: dropout on the adapter's input while training.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    if has_lora(model):
        raise ValueError(f"the {component_of(model)} already carries a LoRA adapter; merge it first (merge_adapter)")
    wanted = check_targets(model, targets)
    config = LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha), target_modules=list(wanted),
                        lora_dropout=dropout, bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's parameters (what a LoRA run trains)."""
    return [p for name, p in model.named_parameters() if ".lora_" in name]


def lora_settings(model: nn.Module, name: str = ADAPTER_NAME) -> dict[str, Any]:
    """{"lora_rank", "lora_alpha", "targets"} of the adapter `name` in `model`."""
    config = _peft_configs(model).get(name)
    if config is None:
        raise ValueError(f"the {component_of(model)} carries no LoRA adapter {name!r}")
    return {"lora_rank": int(config.r), "lora_alpha": float(config.lora_alpha),
            "targets": sorted(config.target_modules)}


def _peft_configs(model: nn.Module) -> dict[str, Any]:
    return dict(getattr(model, "peft_config", None) or {})


# --------------------------------------------------------------------------------------------- base weights


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights without its adapters, under the names the plain model has (`x.base_layer.weight`
    -> `x.weight`): what `weights_fingerprint` of the model before `add_lora` hashed."""
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def base_fingerprint(model: nn.Module) -> str:
    """`core.weights.weights_fingerprint` of `model` as it was without adapters (adapters not merged)."""
    from soundsmith.core.weights import state_fingerprint

    return state_fingerprint(base_state_dict(model))


_fingerprint_without_adapters = base_fingerprint  # for the functions whose keyword shadows the name


# ------------------------------------------------------------------------------------------- save / load


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    """What `soundsmith_adapter.json` records about an adapter folder."""

    folder: Path
    component: str
    base_fingerprint: str
    base_model: str
    lora_rank: int
    lora_alpha: float
    targets: tuple[str, ...]
    extra: dict[str, Any]

    def describe(self) -> str:
        return (f"LoRA adapter for the {self.component} of {self.base_model or 'an unnamed model'} (base "
                f"{self.base_fingerprint}): rank {self.lora_rank}, alpha {self.lora_alpha:g}, "
                f"targets {', '.join(self.targets)}")


def adapter_state_dict(model: nn.Module, name: str = ADAPTER_NAME) -> dict[str, Tensor]:
    """The adapter's tensors under peft's saved names (`<module>.lora_A.weight`, no adapter name, no prefix)."""
    from peft import get_peft_model_state_dict

    # save_embedding_layers=False: no vocabulary check (peft would look the base model up on the Hub)
    return get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)


def save_adapter(model: nn.Module, folder: str | os.PathLike, *, component: str | None = None,
                 base_fingerprint: str | None = None, base_model: str | os.PathLike = "",
                 extra: Mapping[str, Any] | None = None, name: str = ADAPTER_NAME) -> Path:
    """Write the adapter `name` of `model` to `folder` in peft's format + `soundsmith_adapter.json`; return it.

    Args:
        component: what it adapts (default: `component_of(model)`).
        base_fingerprint: the fingerprint of the component without the adapter (default: computed from the
            model's base weights, `base_fingerprint(model)`).
        base_model: the model folder the component came from (recorded, and peft's `base_model_name_or_path`).
        extra: more JSON-ready fields for `soundsmith_adapter.json` (training steps, data...).
    The weights stay in float32 (an adapter is small); the info file is written last, so a folder with it is whole.
    """
    from soundsmith.core.files import write_json
    from soundsmith.core.weights import save_safetensors

    config = _peft_configs(model).get(name)
    if config is None:
        raise ValueError(f"the {component_of(model)} carries no LoRA adapter {name!r} to save")
    component = component or component_of(model)
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (components: {', '.join(COMPONENTS)})")
    fingerprint = base_fingerprint if base_fingerprint is not None else _fingerprint_without_adapters(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = dataclasses.replace(config, inference_mode=True, base_model_name_or_path=str(base_model) or None)
    saved.save_pretrained(str(folder))  # adapter_config.json, as PeftModel.save_pretrained writes it
    state = {PEFT_PREFIX + k: v.detach().float() for k, v in adapter_state_dict(model, name).items()}
    save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    settings = lora_settings(model, name)
    write_json(folder / INFO_FILE, {"format": FORMAT, "component": component, "base_fingerprint": fingerprint,
                                    "base_model": str(base_model), **settings, **dict(extra or {})})
    return folder


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INFO_FILE).is_file()


def read_adapter(folder: str | os.PathLike) -> AdapterInfo:
    """The `soundsmith_adapter.json` of an adapter folder; one-line errors for a folder that is not one."""
    from soundsmith.core.files import read_json_object

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {folder}")
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder} is not a soundsmith adapter folder: it has no {INFO_FILE}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: adapter file {name} is missing")
    raw = read_json_object(info_path)
    if raw.get("format") != FORMAT:
        raise ValueError(f"{info_path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    for key, kind in (("component", str), ("base_fingerprint", str), ("lora_rank", int), ("targets", list)):
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"{info_path}: field {key!r} is missing or not a {kind.__name__}")
    if raw["component"] not in COMPONENTS:
        raise ValueError(f"{info_path}: component {raw['component']!r} is not one of {', '.join(COMPONENTS)}")
    known = {"format", "component", "base_fingerprint", "base_model", "lora_rank", "lora_alpha", "targets"}
    return AdapterInfo(folder=folder, component=raw["component"], base_fingerprint=raw["base_fingerprint"],
                       base_model=str(raw.get("base_model") or ""), lora_rank=int(raw["lora_rank"]),
                       lora_alpha=float(raw.get("lora_alpha") or raw["lora_rank"]),
                       targets=tuple(str(t) for t in raw["targets"]),
                       extra={k: v for k, v in raw.items() if k not in known})


def check_adapter_base(info: AdapterInfo, component: str, fingerprint: str) -> None:
    """Refuse (one line) an adapter for another component or another base model."""
    if info.component != component:
        raise ValueError(f"{info.folder}: an adapter for the {info.component}, not for the {component}")
    if info.base_fingerprint != fingerprint:
        raise ValueError(f"{info.folder}: adapter trained on another base model (its base {info.component} "
                         f"{info.base_fingerprint}, this one {fingerprint}); load it onto the model it was trained "
                         f"from{' (' + info.base_model + ')' if info.base_model else ''}")


def load_adapter(model: nn.Module, folder: str | os.PathLike, *, scale: float = 1.0,
                 expect_fingerprint: str | None = None, name: str | None = None) -> nn.Module:
    """Inject the adapter saved in `folder` into `model` in place, at `scale` (its update times `scale`), and
    return the model in eval mode with nothing requiring grad. Several adapters may be loaded one after the
    other: all of them apply.

    Args:
        expect_fingerprint: the fingerprint of the model's base weights when the caller knows it (a pipeline's
            recorded one); default: computed from `model`. An adapter recording another base is refused in one
            line naming both fingerprints, before anything changes.
        name: the adapter's name inside the model (default: "default", then "adapter_1", ...).
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from soundsmith.core.weights import read_state_dict

    info = read_adapter(folder)
    component = component_of(model)
    fingerprint = expect_fingerprint if expect_fingerprint is not None else base_fingerprint(model)
    check_adapter_base(info, component, fingerprint)
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and -100.0 <= scale <= 100.0):
        raise ValueError(f"adapter scale must be a number in [-100, 100], got {scale!r}")
    try:
        config = LoraConfig.from_pretrained(str(info.folder))
    except (TypeError, ValueError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{info.folder / CONFIG_FILE}: not a readable peft LoRA config "
                         f"({' '.join(str(err).split())[:200]})") from None
    state = read_state_dict(info.folder / WEIGHTS_FILE)
    state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}
    previous = _peft_configs(model)
    if name is None:
        name = ADAPTER_NAME if ADAPTER_NAME not in previous else f"adapter_{len(previous)}"
    if name in previous:
        raise ValueError(f"the {component} already carries an adapter named {name!r}")
    if not isinstance(config.target_modules, str):  # a list (ours); peft also allows one regular expression
        check_targets(model, config.target_modules)
    inject_adapter_in_model(dataclasses.replace(config, inference_mode=True), model, adapter_name=name)
    model.peft_config = {**previous, **_peft_configs(model)}  # peft keeps only the newest one's config
    try:
        expected = adapter_state_dict(model, name)
        _check_adapter_keys(expected, state, info.folder / WEIGHTS_FILE)
        set_peft_model_state_dict(model, state, adapter_name=name)
    except BaseException:
        _remove_adapter(model, name)
        raise
    names = list(model.peft_config)
    for module in model.modules():
        if _is_tuner_layer(module):
            module.set_adapter([n for n in names if n in getattr(module, "lora_A", {})], inference_mode=True)
            if hasattr(module, "set_scale"):
                module.set_scale(name, float(scale))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def set_adapter_scale(model: nn.Module, scale: float, name: str = ADAPTER_NAME) -> nn.Module:
    """Scale adapter `name`'s update by `scale` (relative to alpha / rank; 0 switches it off)."""
    for module in model.modules():
        if _is_tuner_layer(module) and hasattr(module, "set_scale"):
            module.set_scale(name, float(scale))
    return model


def _check_adapter_keys(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: Path) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise ValueError(f"{source}: {what} for this model's layers (an adapter of another architecture?)")
    for key, ref in expected.items():
        if tuple(given[key].shape) != tuple(ref.shape):
            raise ValueError(f"{source}: key {key!r} has shape {list(given[key].shape)}, this model's layer needs "
                             f"{list(ref.shape)} (an adapter of another architecture?)")


def _remove_adapter(model: nn.Module, name: str) -> None:
    """Take adapter `name` out again (a failed load leaves the model as it was)."""
    configs = _peft_configs(model)
    configs.pop(name, None)
    for key, module in list(model.named_modules()):
        if not _is_tuner_layer(module):
            continue
        if name in getattr(module, "lora_A", {}):
            module.delete_adapter(name)
        if not getattr(module, "lora_A", {}) or not configs:
            _replace(model, key, module.get_base_layer())
    if configs:
        model.peft_config = configs
    elif hasattr(model, "peft_config"):
        del model.peft_config


def _replace(model: nn.Module, key: str, module: nn.Module) -> None:
    parent_name, _, child = key.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


# ----------------------------------------------------------------------------------------------- merging


@torch.no_grad()
def merge_adapter(model: nn.Module, names: Sequence[str] | None = None) -> nn.Module:
    """Fold the active adapters (or `names`) into the weights and remove every adapter layer, in place: each
    targeted weight becomes `W + scale * (alpha / rank) * B A` (for a convolution, the kernel of A followed by
    B), so the returned plain model computes what the adapted one did, and saves/loads as a plain model (its
    `weights_fingerprint` is then a new one)."""
    for key, module in list(model.named_modules()):
        if _is_tuner_layer(module):
            module.merge(safe_merge=True, adapter_names=list(names) if names is not None else None)
            _replace(model, key, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
