"""Fine-tuning: a UNet or token-LM run that starts from a model folder (`--init`), fully or with a LoRA adapter.

    soundsmith train unet --init models/default-ldm --lora-rank 8 --data my-corpus --out runs/my-lora
    soundsmith train coarse-lm --init models/default-tokens --data my-corpus --out runs/my-coarse

`init` (a config field, `--init` on the command line) names a model folder: ours (models/default-ldm,
models/default-tokens, a training export) or, for the UNet, a diffusers AudioLDM / MusicLDM folder. The run
starts from the weights of that folder's component, and every frozen part comes from the same folder: the
VAE, vocoder and CLAP of a latent-diffusion model (with its noise schedule: prediction type and betas, and its
unconditional embedding); the CLAP, conditioning RVQ, k-means and codec of a token model (and the LM's own
config: sizes, window). The run's config fields naming parts (`codec`, `vae`, `vocoder`, `clap`; `cond_rvq`,
`kmeans`, ...) and its `model` fields are then not used: `--init` wins, and a field set to something
else is named in a warning. A MusicGen folder is refused for the token LMs (another architecture and
vocabulary), in one line.

`lora_rank` (`--lora-rank R`) trains a LoRA adapter (gen/adapters.py, peft) instead of all weights: only the
adapter's parameters require grad, reach the optimizer and are averaged by the EMA; checkpoints hold the whole
model as every run's do, so `--resume` works as for any run. `lora_targets` picks the layers (default: the
component's `DEFAULT_TARGETS`), `lora_alpha` the scale alpha / rank (default: rank, scale 1).

The export (OUT/export) is:
    LoRA: the adapter folder (peft's adapter_config.json + adapter_model.safetensors, and
          soundsmith_adapter.json with the base model's fingerprint), ~1-2 MB;
    full: a complete model folder that `load_pipeline` loads: the init folder's config.json with the new
          component and links (relative paths) to the init folder's frozen parts, where loading may follow
          them (core/paths.py: the export's models tree or the shipped models/); otherwise, or for a diffusers
          init, every part is written into it (our layout).

Default configs when `init` is set and no --config is given: `train/configs/unet-lora.json` /
`unet-finetune.json` and `lm-lora.json` / `lm-finetune.json` (shared by the three LMs).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import CONFIGS, bounded
from .loop import RunConfig

log = logging.getLogger(__name__)

FINETUNE_CONFIGS = {"unet": ("unet-finetune.json", "unet-lora.json"),
                    "lm": ("lm-finetune.json", "lm-lora.json")}


@dataclass
class FinetuneConfig(RunConfig):
    """`RunConfig` plus where a run starts from: the fields of the components that can fine-tune (the UNet and
    the token LMs)."""

    init: str | None = None  # a model folder to start from (its component's weights and all its frozen parts)
    lora_rank: int | None = bounded(None, 1)  # train a LoRA adapter of this rank instead of every weight
    lora_alpha: float | None = bounded(None, 0.0, low_open=True)  # LoRA scale alpha / rank (default alpha = rank)
    lora_targets: tuple[str, ...] = ()  # layer names (peft target_modules); empty: the component's defaults

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank is None:
            for name in ("lora_alpha", "lora_targets"):
                if getattr(self, name):
                    raise ValueError(f"field '{name}' applies to a LoRA run: set lora_rank (--lora-rank R) too")
        elif not self.init:
            raise ValueError("field 'lora_rank': a LoRA adapter adapts an existing model: give init "
                             "(--init MODEL_DIR) too")


def default_config(kind: str, default: Path, overrides: Any) -> Path:
    """The config a run reads when none is given: the component's own (`default`), or with `init` among the
    overrides its fine-tuning recipe (`kind` "unet" or "lm"; LoRA when `lora_rank` is set too)."""
    from .config import _parse_overrides

    given = _parse_overrides(overrides) if overrides is not None else {}
    if not given.get("init"):
        return default
    full, lora = FINETUNE_CONFIGS[kind]
    return CONFIGS / (lora if given.get("lora_rank") is not None else full)


# ------------------------------------------------------------------------------------------ the init model


@dataclass
class InitModel:
    """The model folder a run starts from, loaded as a pipeline."""

    folder: Path
    component: str  # "unet", "semantic_lm", "coarse_lm" or "fine_lm"
    pipe: Any  # LDMPipeline or TokenPipeline, fp32 on the CPU
    raw_config: dict[str, Any] | None  # its config.json (None: a diffusers folder)
    base_fingerprint: str  # weights_fingerprint of the component as loaded

    @property
    def model(self) -> nn.Module:
        return getattr(self.pipe, self.component)

    def trainable_copy(self) -> nn.Module:
        """A float32 copy of the component in train mode (the pipeline's stays as it is)."""
        return copy.deepcopy(self.model).float().train().requires_grad_(True)


def load_init(folder: str | os.PathLike, component: str) -> InitModel:
    """Load model folder `folder` to start `component` from; one-line errors for a folder that is not a model,
    a model of the other backend, or a MusicGen folder (for the token LMs)."""
    from soundsmith.core.weights import weights_fingerprint
    from soundsmith.pipelines import load_pipeline

    path = Path(folder)
    raw = _read_config(path)
    wanted = "ldm" if component == "unet" else "tokens"
    if component != "unet" and raw is not None and raw.get("model_type") == "musicgen":
        raise ValueError(f"--init {path}: a MusicGen folder; our token LMs (semantic, coarse, fine) cannot start from "
                         "MusicGen's decoder (another architecture and token vocabulary): start from a soundsmith "
                         "token model such as models/default-tokens")
    if raw is not None and isinstance(raw.get("backend"), str) and raw["backend"] != wanted:
        _wrong_backend(path, raw["backend"], wanted, component)  # before loading anything
    try:
        pipe = load_pipeline(path)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        kind = next(k for k in (FileNotFoundError, NotADirectoryError, ValueError) if isinstance(err, k))
        raise kind(f"--init: {' '.join(str(err).split())}") from None
    if pipe.backend != wanted:
        _wrong_backend(path, pipe.backend, wanted, component)
    model = getattr(pipe, component, None)
    if model is None:
        raise ValueError(f"--init {path}: this token model has no {component.replace('_', ' ')} to start from")
    return InitModel(folder=path, component=component, pipe=pipe, raw_config=raw,
                     base_fingerprint=weights_fingerprint(model))


def _wrong_backend(path: Path, found: str, wanted: str, component: str) -> None:
    example = "models/default-ldm or a diffusers AudioLDM folder" if wanted == "ldm" else "models/default-tokens"
    raise ValueError(f"--init {path}: a {found} model has no {component.replace('_', ' ')}; give a "
                     f"{'latent-diffusion' if wanted == 'ldm' else 'token'} model such as {example}")


def _read_config(path: Path) -> dict[str, Any] | None:
    """The folder's config.json when it has a readable one (load_pipeline reports everything else)."""
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def ignore_fields(cfg: Any, fields: Mapping[str, Any], where: str) -> Any:
    """`cfg` with `fields` (name -> the value that means "unused") set: --init provides what they name. A field
    set to something else is named in a warning."""
    changed = {name: getattr(cfg, name) for name, unused in fields.items() if getattr(cfg, name) not in (unused, None)}
    if changed:
        log.warning("%s: --init %s provides the parts and the model; ignoring field(s) %s", where, cfg.init,
                    ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    return dataclasses.replace(cfg, **fields)


def growth(init: InitModel, cfg: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """The model fields of `cfg` that grow the init LM (gen/token_lm.GROWABLE, e.g. `aligned_semantic`: true),
    and `cfg` without them (every other model field is ignored, as `ignore_fields` says)."""
    from soundsmith.gen.token_lm import GROWABLE

    model = dict(getattr(cfg, "model", None) or {})
    grow = {k: model.pop(k) for k in GROWABLE if k in model and model[k] != getattr(init.model.config, k)}
    if grow and cfg.lora_rank is not None:
        raise ValueError(f"{where}: model field(s) {', '.join(grow)} grow the LM, which a LoRA run cannot; "
                         "drop lora_rank (a full fine-tune) or the field")
    if grow and getattr(cfg, "train_grown_only", False):  # before the run folder: the growth must add a parameter
        from soundsmith.gen.token_lm import build_lm

        known = set(init.model.state_dict())
        if not set(build_lm(dataclasses.replace(init.model.config, **grow)).state_dict()) - known:
            raise ValueError(f"train_grown_only: growing by {', '.join(grow)} adds no new parameter to train "
                             "(it lengthens existing tables); drop train_grown_only")
    return dataclasses.replace(cfg, model=model), grow


def prepare_model(init: InitModel, cfg: FinetuneConfig, grow: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a fine-tuning run trains: a copy of the init component (grown by `grow`, see `growth`), with a
    fresh LoRA adapter when `cfg.lora_rank` is set (then only the adapter requires grad). With `grow` and a true
    `train_grown_only` field in `cfg`, only the parameters the growth added require grad: every init weight stays
    as it was, so whatever does not use the new input is generated exactly as by the init model."""
    from soundsmith.gen.adapters import add_lora

    model = init.trainable_copy()
    if grow:
        from soundsmith.gen.token_lm import grow_lm

        before = set(dict(model.named_parameters()))
        model = grow_lm(model, **grow)
        log.info("grew the init's %s by %s (new weights start at zero)", init.component,
                 ", ".join(f"{k}={v!r}" for k, v in grow.items()))
        if getattr(cfg, "train_grown_only", False):  # `growth` checked that there are some
            added = [name for name, _ in model.named_parameters() if name not in before]
            for name, param in model.named_parameters():
                param.requires_grad_(name in added)
            log.info("training only the grown parameters: %s", ", ".join(added))
    if cfg.lora_rank is not None:
        add_lora(model, cfg.lora_rank, cfg.lora_targets or None, cfg.lora_alpha)
        trained = sum(p.numel() for p in trainable(model))
        total = sum(p.numel() for p in model.parameters())
        log.info("LoRA rank %d: %d trainable parameters of %d (%.2f%%)", cfg.lora_rank, trained, total,
                 100 * trained / total)
    return model


def check_lora_options(init: InitModel, cfg: FinetuneConfig) -> None:
    """Refuse bad LoRA targets before the run folder is made (one line naming a few valid ones)."""
    from soundsmith.gen.adapters import check_targets

    if cfg.lora_rank is not None:
        check_targets(init.model, cfg.lora_targets or None)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------- exports


class AdapterExport:
    """What a LoRA run exports: `save_pretrained(folder)` writes the adapter folder (gen/adapters.py)."""

    def __init__(self, model: nn.Module, init: InitModel, extra: Mapping[str, Any] | None = None):
        self.model, self.init, self.extra = model, init, dict(extra or {})

    def save_pretrained(self, folder: str | os.PathLike, dtype: Any = None) -> Path:
        from soundsmith.core.paths import normalized
        from soundsmith.gen.adapters import save_adapter

        # float32 whatever `dtype` says: an adapter is small and its update is small against the weights
        return save_adapter(self.model, folder, component=self.init.component,
                            base_fingerprint=self.init.base_fingerprint, base_model=str(normalized(self.init.folder)),
                            extra=self.extra)


class ModelFolderExport:
    """What a full fine-tuning run exports: `save_pretrained(folder, dtype)` writes a complete model folder with
    the trained component and the init folder's other parts (linked where loading can follow the link)."""

    def __init__(self, model: nn.Module, init: InitModel):
        self.model, self.init = model, init

    def save_pretrained(self, folder: str | os.PathLike, dtype: Any = None) -> Path:
        folder = Path(folder)
        if self.init.component == "unet":
            return self._save_ldm(folder, dtype)
        return self._save_tokens(folder, dtype)

    def _links(self, folder: Path, skip: str) -> tuple[dict[str, Path], bool]:
        """(part -> its folder in the init model, for the parts `folder` can link to; whether that is all of
        them). A diffusers folder has none to link; a part outside the trees loading follows is not linkable."""
        from soundsmith.core.paths import model_link

        raw = self.init.raw_config
        if raw is None or not isinstance(raw.get("components"), dict):
            return {}, False
        config_path = self.init.folder / "config.json"
        parts, every = {}, True
        for name, rel in raw["components"].items():
            if name == skip:
                continue
            target = model_link(rel, self.init.folder, where=str(config_path), what=f"part {name!r}")
            if linkable(target, folder):
                parts[name] = target
            else:
                every = False
        return parts, every

    def _save_ldm(self, folder: Path, dtype: Any) -> Path:
        from soundsmith.codecs.vocoders import SPEC_PATHS
        from soundsmith.core.files import write_json
        from soundsmith.core.paths import normalized
        from soundsmith.core.runtime import resolve_dtype
        from soundsmith.core.weights import save_safetensors
        from soundsmith.pipelines.ldm import LDMPipeline

        pipe, unet = self.init.pipe, self.model
        parts, every = self._links(folder, skip="unet")
        spec = (self.init.raw_config or {}).get("vocoder")
        if every and "vae" in parts and isinstance(spec, dict):  # a vocoder's files sit beside the VAE
            every = all(linkable(normalized(parts["vae"].parent / spec[k]), folder)
                        for k in SPEC_PATHS if isinstance(spec.get(k), str))
        if not every:  # every part written into the folder (our layout)
            full = LDMPipeline(unet, pipe.codec, pipe.conditioner, pipe.noise_schedule, pipe.config,
                               name_or_path=str(self.init.folder))
            return full.save_pretrained(folder, dtype=dtype)
        dt = torch.float32 if dtype is None else resolve_dtype(dtype)
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        unet.save_config(str(folder / "unet"))  # diffusers' layout, as LDMPipeline.save_pretrained writes it
        save_safetensors({k: v.to(dt) if v.is_floating_point() else v for k, v in unet.state_dict().items()},
                         folder / "unet" / "diffusion_pytorch_model.safetensors")
        components = {"unet": "unet", **{name: _relative(target, folder) for name, target in parts.items()}}
        reader = getattr(pipe.conditioner, "reader", None)  # a tempo-conditioned UNet's reader (gen/tempo.py)
        if reader is not None:
            reader.save_pretrained(folder / "tempo")
            components["tempo"] = "tempo"
        write_json(folder / "config.json", {**self.init.raw_config, "components": components})
        return folder

    def _save_tokens(self, folder: Path, dtype: Any) -> Path:
        from soundsmith.pipelines.tokens import TokenPipeline

        pipe = self.init.pipe
        lms = {name: getattr(pipe, name) for name in ("semantic_lm", "coarse_lm", "fine_lm")}
        lms[self.init.component] = self.model
        full = TokenPipeline(pipe.conditioner, pipe.cond_rvq, pipe.kmeans, lms["semantic_lm"], lms["coarse_lm"],
                             lms["fine_lm"], pipe.codec, pipe.config, name_or_path=str(self.init.folder),
                             tempo_reader=getattr(pipe, "tempo_reader", None))
        links, _ = self._links(folder, skip=self.init.component)  # the others are written into the folder
        return full.save_pretrained(folder, dtype=dtype, link=links)


def linkable(target: Path, folder: Path) -> bool:
    """Whether model `folder` may name `target` in its config.json (core/paths.py's containment)."""
    from soundsmith.core.paths import SHIPPED_MODELS, is_inside, models_tree

    return any(is_inside(target, root) for root in (models_tree(folder), SHIPPED_MODELS))


def _relative(target: Path, folder: Path) -> str:
    from soundsmith.core.paths import normalized

    return os.path.relpath(normalized(target), normalized(folder))
