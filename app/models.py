"""Which models the app offers, what each one can do, and the gate that lets one generation at a time use a model.

Nothing here is Streamlit-specific, so it is tested without a browser; `ui.py` wraps `load_model` in
`st.cache_resource` (one copy per process, model folder and vocoder) and `gate_for` in the same cache (one gate
per folder, shared by every session).
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundsmith.core.paths import shipped_models
from soundsmith.pipelines import takes_adapters, takes_vocoder

MODEL_DIR_ENV = "SOUNDSMITH_MODEL_DIR"  # set by `soundsmith app --model-dir`
NOVELTY_INDEX_ENV = "SOUNDSMITH_NOVELTY_INDEX"  # set by `soundsmith app --novelty-index`
OUTPUT_DIR_ENV = "SOUNDSMITH_APP_OUT"  # set by `soundsmith app --out`: the clips and the History
ANY_FOLDER_ENV = "SOUNDSMITH_APP_ANY_FOLDER"  # "1" set by `soundsmith app --allow-any-folder`
SHIPPED = ("default-ldm", "default-tokens")  # the shipped defaults of both backends, offered first
# LoRA adapter folders are offered from the model dir itself (<model dir>/<name>/) and from this sub-folder of it
# (<model dir>/adapters/<name>/), one level deep: `soundsmith train ... --lora-rank R` exports one to copy there
ADAPTERS_FOLDER = "adapters"


def default_model_dir() -> Path:
    """`$SOUNDSMITH_MODEL_DIR`, else the shipped models/ (the checkout's, or the installed package data)."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env) if env else shipped_models()


def default_output_dir() -> Path:
    """`$SOUNDSMITH_APP_OUT`, else outputs/app under the current folder (where `soundsmith generate` writes)."""
    env = os.environ.get(OUTPUT_DIR_ENV)
    return Path(env) if env else Path("outputs") / "app"


def any_folder_allowed() -> bool:
    return os.environ.get(ANY_FOLDER_ENV) == "1"


def check_inside(text: str | os.PathLike, roots: list[Path], what: str) -> Path:
    """A folder a visitor typed -> its absolute path, if it lies inside one of `roots` (or the app was started with
    --allow-any-folder); else a one-line PermissionError. Decided on the text alone, before the path is looked at,
    so a refusal tells nothing about folders outside. '..' is refused outright: after a symlink the kernel would
    resolve it elsewhere than the text says; symlinks the owner put inside a root are followed."""
    raw = Path(str(text).strip()).expanduser()
    path = Path(os.path.abspath(raw))
    if any_folder_allowed():
        return path
    bases = {Path(os.path.abspath(r)) for r in roots} | {Path(r).resolve() for r in roots}
    if ".." not in raw.parts and any(path.is_relative_to(base) for base in bases):
        return path
    inside = " or ".join(str(r) for r in roots)
    raise PermissionError(f"{what} {raw} is not inside {inside}: this app reads only those folders (start it with "
                          "`soundsmith app --allow-any-folder` to allow any)")


def model_kind(folder: Path) -> str | None:
    """The backend a folder holds ("ldm", "tokens", "musicgen", ...), None if `load_pipeline` would not take it.

    Reads only config.json / model_index.json with the rules of `soundsmith.pipelines.load_pipeline`, so listing a
    folder of models loads nothing. Component folders (a CLAP, a VAE) have a config.json without "backend" and
    are not offered.
    """
    from soundsmith import pipelines

    try:
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            kind = config.get("backend") or getattr(pipelines, "TRANSFORMERS_FOLDERS", {}).get(config.get("model_type"))
        elif (folder / "model_index.json").is_file():
            index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
            kind = pipelines.DIFFUSERS_FOLDERS.get(index.get("_class_name"))
        else:
            return None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return kind if isinstance(kind, str) and kind in pipelines.PIPELINE_BACKENDS else None


def find_models(model_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Label -> folder for the pipeline folders in `model_dir`: the shipped defaults first, then the rest by name."""
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    if not root.is_dir():
        return {}
    rank = {name: i for i, name in enumerate(SHIPPED)}
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (rank.get(p.name, len(SHIPPED)), p.name))
    found = {}
    for folder in folders:
        kind = model_kind(folder)
        if kind is not None:
            found[f"{folder.name} ({kind})"] = folder
    return found


def check_model_folder(text: str) -> Path:
    """A folder the user typed -> its path; a one-line error if it is not a pipeline folder."""
    if not text or not text.strip():
        raise ValueError("model folder is empty: type the path of a model folder")
    folder = Path(text.strip()).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if model_kind(folder) is None:
        raise ValueError(f"{folder} is not a model folder: expected a soundsmith folder (config.json with a "
                         "'backend'), a diffusers AudioLDM/MusicLDM folder or a transformers MusicGen folder")
    return folder


def load_model(path: str, stamp: float = 0.0, vocoder: str | None = None,
               adapters: tuple[tuple[str, float], ...] = ()) -> Any:
    """Load a pipeline folder on the best device; `stamp` (config.json's mtime) only keys the app's cache so a
    re-saved model is loaded again. `vocoder`: a registry name (codecs/vocoders.py) that replaces the folder's
    own, for backends whose loader takes one (`takes_vocoder`); None keeps the folder's. `adapters`: (LoRA adapter
    folder, scale) pairs applied at load (pipelines/adapters.py). Errors are the pipelines' one-line ValueError /
    FileNotFoundError (and ModuleNotFoundError for a vocoder's missing package)."""
    from soundsmith.pipelines import load_pipeline

    extra: dict[str, Any] = {}
    if adapters:
        extra = {"adapters": [folder for folder, _ in adapters], "adapter_scales": [scale for _, scale in adapters]}
    # a model that takes no vocoder (or no adapters) refuses one before loading
    pipe = load_pipeline(path, device="auto", vocoder=vocoder, **extra)
    pipe.progress_bar = False  # the app shows its own bar
    return pipe


def folder_takes_vocoder(folder: str | os.PathLike) -> bool:
    """`takes_vocoder` for the backend a folder holds, without loading it (False if it is not a model folder)."""
    from soundsmith import pipelines

    kind = model_kind(Path(folder))
    return kind is not None and takes_vocoder(pipelines.PIPELINE_BACKENDS[kind]())


def vocoder_name(pipe: Any) -> str | None:
    """The registry name of the vocoder a loaded pipeline decodes its mel with; None for a model that decodes
    to audio some other way (MusicGen's EnCodec)."""
    name = getattr(getattr(getattr(pipe, "codec", None), "vocoder", None), "name", None)
    return name if isinstance(name, str) and name else None


def find_adapters(model_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Label -> folder of the LoRA adapter folders (a soundsmith_adapter.json inside) in `model_dir` and in its
    `adapters/` sub-folder, one level deep, by name. Reads nothing but the folders' names and files."""
    from soundsmith.gen.adapters import is_adapter_folder

    root = Path(model_dir) if model_dir is not None else default_model_dir()
    found: dict[str, Path] = {}
    for base, prefix in ((root, ""), (root / ADAPTERS_FOLDER, f"{ADAPTERS_FOLDER}/")):
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            if is_adapter_folder(folder):
                found[f"{prefix}{folder.name}"] = folder
    return found


def adapters_for(pipe: Any, found: dict[str, Path]) -> tuple[dict[str, Path], int]:
    """(label -> folder of the adapters in `found` that fit the loaded pipeline: a component it has, trained on the
    weights it has; how many others there are: adapters of other models). Unreadable folders count as others."""
    from soundsmith.gen.adapters import read_adapter

    components = getattr(pipe, "adapter_components", None) or {}
    fits, others = {}, 0
    for label, folder in found.items():
        try:
            info = read_adapter(folder)
            attr = components.get(info.component)
            ok = attr is not None and getattr(pipe, attr, None) is not None and \
                pipe.part_fingerprint(attr) == info.base_fingerprint
        except (OSError, ValueError):
            ok = False
        if ok:
            fits[label] = folder
        else:
            others += 1
    return fits, others


def config_stamp(path: str | os.PathLike) -> float:
    folder = Path(path)
    for name in ("config.json", "model_index.json"):
        if (folder / name).is_file():
            return (folder / name).stat().st_mtime
    return 0.0


# ----------------------------------------------------------------------------------------- capabilities


@dataclass(frozen=True)
class Capabilities:
    """What a loaded pipeline accepts, so the controls show only what applies (and say so where not)."""

    backend: str
    diffusion: bool  # num_inference_steps and a sampler
    sampling: bool  # temperature / top_k / top_p
    audio_to_audio: bool  # audio= with strength=
    inpaint: bool  # audio= with inpaint=[(start_s, end_s)]
    continuation: bool  # audio_prompt=
    schedulers: tuple[str, ...]
    default_scheduler: str | None
    default_steps: int | None
    default_guidance: float
    default_duration_s: float
    max_duration_s: float
    sample_rate: int
    vocoders: tuple[str, ...] = ()  # registry names its loader can swap in (codecs/vocoders.py); () if none
    vocoder: str | None = None  # the vocoder this loaded copy decodes with (None: not a mel model)
    adaptable: bool = False  # its loader applies LoRA adapters (pipelines/adapters.py)
    adapters: tuple[tuple[str, float], ...] = ()  # (folder, scale) of the adapters this loaded copy carries
    clap_score: bool = False  # its call scores single outputs when asked (`clap_score=True`): the takes show it


def capabilities_of(pipe: Any) -> Capabilities:
    """Read a pipeline's abilities from its `__call__` signature and config. A parameter that only exists to be
    refused (the token backend takes `num_inference_steps` to say it has none) counts only when the config has a
    default for it."""
    params = inspect.signature(pipe.__call__).parameters
    config = getattr(pipe, "config", None)
    features = set()
    if "num_inference_steps" in params and getattr(config, "num_inference_steps", None) is not None:
        features.add("diffusion")
    if "temperature" in params:
        features.add("sampling")
    if "strength" in params and "audio" in params:
        features.add("audio_to_audio")
    if "inpaint" in params and "audio" in params:
        features.add("inpaint")
    if "audio_prompt" in params:
        features.add("continuation")
    module = inspect.getmodule(type(pipe))
    schedulers: tuple[str, ...] = ()
    if "diffusion" in features and "scheduler" in params:
        schedulers = tuple(getattr(module, "SCHEDULERS", {}) or ())
    default_scheduler = getattr(config, "scheduler", None) if schedulers else None
    if default_scheduler is not None and default_scheduler not in schedulers:
        schedulers = (default_scheduler, *schedulers)
    # defaults: the pipeline's config, else its module's constants / the call's signature / transformers'
    # generation_config (MusicGen folders carry no soundsmith config)
    signature_duration = params["duration_s"].default if "duration_s" in params else None
    generation_config = getattr(getattr(pipe, "model", None), "generation_config", None)
    duration = float(_first(getattr(config, "duration_s", None), signature_duration, 5.0))
    max_duration = float(_first(getattr(config, "max_duration_s", None), getattr(module, "MAX_DURATION_S", None),
                                max(duration, 30.0)))
    guidance = float(_first(getattr(config, "guidance_scale", None), getattr(generation_config, "guidance_scale", None),
                            3.0))
    vocoders: tuple[str, ...] = ()
    if takes_vocoder(type(pipe)) and vocoder_name(pipe) is not None:  # a token model on a waveform codec has none
        from soundsmith.codecs.vocoders import VOCODERS

        vocoders = tuple(VOCODERS)
    return Capabilities(
        backend=str(getattr(pipe, "backend", "") or type(pipe).__name__),
        diffusion="diffusion" in features, sampling="sampling" in features,
        audio_to_audio="audio_to_audio" in features, inpaint="inpaint" in features,
        continuation="continuation" in features, schedulers=schedulers, default_scheduler=default_scheduler,
        default_steps=getattr(config, "num_inference_steps", None) if "diffusion" in features else None,
        default_guidance=float(guidance), default_duration_s=min(duration, max_duration), max_duration_s=max_duration,
        sample_rate=int(getattr(pipe, "sample_rate", 16000)), vocoders=vocoders, vocoder=vocoder_name(pipe),
        adaptable=takes_adapters(type(pipe)) and bool(getattr(pipe, "adapter_components", None)),
        adapters=tuple((str(a["folder"]), float(a["scale"])) for a in getattr(pipe, "adapters", None) or []),
        clap_score="clap_score" in params,
    )


def _first(*values: Any) -> Any:
    """The first value that is a number (not None, not a bool, not inspect's "no default")."""
    return next(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))


# ------------------------------------------------------------------------------------------------- gate


class ModelGate:
    """One generation at a time per model, shared by all sessions of the process.

    `hold(on_wait)` takes the model; while another session holds it, `on_wait(ahead)` is called about every
    `poll_s` seconds with the number of sessions ahead, so the waiting page can say it is queued (and, being a
    Streamlit call, lets the user leave the queue by interrupting the run).
    """

    def __init__(self, poll_s: float = 0.5):
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._queued = 0  # sessions holding or waiting for the model
        self.poll_s = poll_s

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextmanager
    def hold(self, on_wait: Callable[[int], Any] | None = None) -> Iterator[float]:
        """Yields the seconds spent waiting."""
        with self._count_lock:
            ahead = self._queued
            self._queued += 1
        start = time.perf_counter()
        try:
            acquired = self._lock.acquire(blocking=False)
            while not acquired:
                if on_wait is not None:
                    on_wait(max(1, ahead))
                acquired = self._lock.acquire(timeout=self.poll_s)
        except BaseException:  # a Streamlit stop/rerun raised inside on_wait: leave the queue
            with self._count_lock:
                self._queued -= 1
            raise
        try:
            yield time.perf_counter() - start
        finally:
            self._lock.release()
            with self._count_lock:
                self._queued -= 1
