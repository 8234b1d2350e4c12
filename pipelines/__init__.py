"""Prompt -> waveform. `load_pipeline(path)` reads a model folder's `config.json` once and builds the
backend it names; each backend registers a zero-argument factory for its pipeline class below."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _ldm() -> type:
    from .ldm import LDMPipeline  # latent diffusion (AudioLDM family)

    return LDMPipeline


def _tokens() -> type:
    from .tokens import TokenPipeline  # token hierarchy (MusicLM style)

    return TokenPipeline


def _musicgen() -> type:
    from .musicgen import MusicgenPipeline  # transformers MusicGen folders

    return MusicgenPipeline


# diffusers pipeline folders (model_index.json "_class_name", no config.json) -> the backend that loads them
DIFFUSERS_FOLDERS: dict[str, str] = {"AudioLDMPipeline": "ldm", "MusicLDMPipeline": "ldm"}


# transformers model folders (config.json "model_type", no "backend" field) -> the backend that loads them
TRANSFORMERS_FOLDERS: dict[str, str] = {"musicgen": "musicgen"}


# backend name (config.json "backend") -> factory returning the pipeline class; heavy imports stay inside
PIPELINE_BACKENDS: dict[str, Callable[[], type]] = {"ldm": _ldm, "tokens": _tokens, "musicgen": _musicgen}


# what a part's folder is, by its config.json "_class_name" or "model_type": such a folder given where a
# pipeline is expected is named for what it is (not "field 'backend' is None")
PART_FOLDERS: dict[str, str] = {
    "MelLatentCodec": "a mel codec", "MelRVQCodec": "a mel RVQ codec", "MelVAE": "a mel VAE",
    "AutoencoderKL": "a VAE", "Vocoder": "a vocoder", "speecht5_hifigan": "a vocoder", "MelAdapter": "a mel adapter",
    "NeuralCodec": "a neural codec", "encodec": "an EnCodec codec", "UNet2DConditionModel": "a UNet",
    "SemanticLM": "a token LM", "CoarseLM": "a token LM", "FineLM": "a token LM",
    "soundsmith-clap": "a CLAP", "clap": "a CLAP", "soundsmith-cond-rvq": "a conditioning quantizer",
    "soundsmith-semantic-kmeans": "a semantic tokenizer", "soundsmith-labels": "a label classifier",
    "soundsmith-feature-labels": "a label classifier",
}


def load_pipeline(path: str | os.PathLike, *, backend: str | None = None, **kwargs: Any) -> Any:
    """Load the pipeline saved in folder `path`, picking the backend from its `config.json` ("backend", or
    for a transformers MusicGen folder "model_type") or, for a diffusers AudioLDM / MusicLDM folder, its
    `model_index.json`. `backend`, if given, must agree. Other keyword arguments go to the backend's
    `from_pretrained`: `device`, `dtype`, `vocoder`, and `adapters` (a LoRA adapter folder or a list of them,
    each applied to the component its soundsmith_adapter.json names) with `adapter_scales` (one for all or one
    per adapter, in [0, 2]; default 1), as diffusers' `load_lora_weights` / `set_adapters` (pipelines/adapters.py)."""
    path = Path(path)
    config_file = path / "config.json"
    if path.is_file():
        raise NotADirectoryError(f"a model is a folder (with config.json), got a file: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    index_file = path / "model_index.json"
    if not config_file.is_file() and index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            kind = index.get("_class_name")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise ValueError(f"{index_file}: not a readable diffusers model_index.json") from None
        if kind not in DIFFUSERS_FOLDERS:
            raise ValueError(f"{index_file}: diffusers pipeline {kind!r} is not supported; supported: "
                             + ", ".join(DIFFUSERS_FOLDERS))
        _check_backend(backend, DIFFUSERS_FOLDERS[kind], index_file)
        return _from_pretrained(DIFFUSERS_FOLDERS[kind], path, kwargs, index)
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a soundsmith model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{config_file}: not a UTF-8 text file (binary or another encoding)") from None
    found = config.get("backend") if isinstance(config, dict) else None
    if found is None and isinstance(config, dict) and config.get("model_type") in TRANSFORMERS_FOLDERS:
        found = TRANSFORMERS_FOLDERS[config["model_type"]]
    if found is None and isinstance(config, dict):
        _refuse_part_folder(path, config)
    if found not in PIPELINE_BACKENDS:
        raise ValueError(f"{config_file}: field 'backend' is {found!r}; known backends: "
                         f"{', '.join(sorted(PIPELINE_BACKENDS))}")
    _check_backend(backend, found, config_file)
    return _from_pretrained(found, path, kwargs, config)


def takes_vocoder(pipeline_class: type) -> bool:
    """Whether a pipeline's loader can replace its vocoder (`from_pretrained(..., vocoder=name)`)."""
    return "vocoder" in inspect.signature(pipeline_class.from_pretrained).parameters


def takes_adapters(pipeline_class: type) -> bool:
    """Whether a pipeline's loader applies LoRA adapters (`from_pretrained(..., adapters=[...])`)."""
    return "adapters" in inspect.signature(pipeline_class.from_pretrained).parameters


def _from_pretrained(backend: str, path: Path, kwargs: dict[str, Any], folder_config: dict[str, Any]) -> Any:
    """The backend's `from_pretrained`, given the folder's config as read here (`folder_config`: config.json, or a
    diffusers folder's model_index.json); a vocoder asked of a model that decodes some other way is refused in one
    line (MusicGen's EnCodec turns tokens straight into a waveform)."""
    pipeline_class = PIPELINE_BACKENDS[backend]()
    takes = takes_vocoder(pipeline_class)
    if kwargs.get("vocoder") is not None and not takes:
        raise ValueError(f"the {backend} model in {path} decodes with its own decoder: it takes no vocoder, "
                         f"got {kwargs['vocoder']!r}")
    if not takes:
        kwargs = {k: v for k, v in kwargs.items() if k != "vocoder"}
    if not takes_adapters(pipeline_class):
        if kwargs.get("adapters"):
            raise ValueError(f"the {backend} model in {path} takes no LoRA adapters (they adapt the UNet of a "
                             f"latent-diffusion model and the LMs of a soundsmith token model), got "
                             f"{kwargs['adapters']!r}")
        if kwargs.get("adapter_scales") is not None:
            raise ValueError(f"the {backend} model in {path} takes no LoRA adapters: adapter_scales without adapters")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("adapters", "adapter_scales")}
    return pipeline_class.from_pretrained(path, folder_config=folder_config, **kwargs)


def _refuse_part_folder(path: Path, config: dict[str, Any]) -> None:
    """A folder holding one part of a model (a mel codec, a CLAP, ...) is not a pipeline: say which it is."""
    kind = config.get("_class_name") or config.get("model_type")
    what = PART_FOLDERS.get(kind) if isinstance(kind, str) else None
    if what is not None:
        raise ValueError(f"{path} is {what} folder ({kind}), not a generation model; give a pipeline folder "
                         "(config.json with a 'backend'), such as models/default-ldm or models/default-tokens")


def _check_backend(wanted: str | None, found: str, source: Path) -> None:
    if wanted is not None and wanted != found:
        raise ValueError(f"--backend {wanted} disagrees with the model folder: {source} names backend {found!r}")
