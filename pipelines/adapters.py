"""LoRA adapters at load time: `load_pipeline(path, adapters=[DIR, ...], adapter_scales=[S, ...])`, and merging
them into a complete model folder (`soundsmith assemble merge`).

An adapter folder (soundsmith.gen.adapters: peft's adapter_config.json + adapter_model.safetensors, plus
soundsmith_adapter.json naming its component and the fingerprint of the weights it was trained on) adapts one
component of a pipeline: the `unet` of a latent-diffusion model, or the `semantic_lm` / `coarse_lm` / `fine_lm` of a
token model (`Pipeline.adapter_components`, component -> attribute). Loading:

    pipe = load_pipeline("models/default-ldm", adapters=["runs/dogs/export"], adapter_scales=[0.8])

1. `resolve_adapters` (before any weights load): one folder or a list, one scale for all or one per adapter, each
   in [0, MAX_SCALE]; each folder is read (one-line errors for a folder that is not an adapter), and an adapter
   for a component the backend lacks is refused in one line.
2. `apply_adapters` (after the parts load, before the move to the device/dtype): every adapter's recorded base
   fingerprint is checked against the loaded component's (`Pipeline.part_fingerprint`, the hash loading checks
   anyway) before any is injected: an adapter trained on another base is refused in one line naming the adapter
   folder and both fingerprints. Then each is injected at its scale (several on one component all apply).
3. The pipeline records them (`Pipeline.adapters`: folder, component, scale, base fingerprint, the adapter's own
   weights fingerprint); every output's parameters / JSON sidecar carry that list, and the pipeline's
   `fingerprint` (the batch manifest's check, the watermark payload) covers them: the same weights with another
   adapter or scale are another model.

A scale of 0 gives the base model's audio; 1 the adapter as trained. Merging (`merge_adapters`, `save_merged`) folds
the updates into the weights: the result is a plain model folder of the same layout (ours, or a diffusers
AudioLDM folder whose merged UNet is written back in diffusers' layout) that loads without peft.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from soundsmith.core.checks import check_float
from soundsmith.core.files import write_json

MAX_SCALE = 2.0  # the largest adapter scale offered (CLI, app, load_pipeline): 1 is the adapter as trained
MERGE_RECORD = "soundsmith_merge.json"  # what a merged folder was made from (base model, adapters, scales)


@dataclasses.dataclass(frozen=True)
class AdapterChoice:
    """One adapter to load: its folder's `AdapterInfo`, the scale, and the fingerprint of its own weights."""

    info: Any  # soundsmith.gen.adapters.AdapterInfo
    scale: float
    fingerprint: str

    @property
    def component(self) -> str:
        return self.info.component

    def record(self) -> dict[str, Any]:
        """What a pipeline keeps in `adapters` and every output's parameters (JSON-ready)."""
        return {"folder": str(self.info.folder), "component": self.info.component, "scale": self.scale,
                "base_fingerprint": self.info.base_fingerprint, "fingerprint": self.fingerprint,
                "lora_rank": self.info.lora_rank}


def adapter_list(adapters: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str | os.PathLike]:
    """None -> [], one folder -> [it], a list -> the list."""
    if adapters is None:
        return []
    if isinstance(adapters, (str, os.PathLike)):
        return [adapters]
    if isinstance(adapters, (bytes, Mapping)) or not isinstance(adapters, Sequence):
        raise ValueError(f"adapters must be an adapter folder or a list of them, got {type(adapters).__name__}")
    return list(adapters)


def scale_list(adapter_scales: Any, count: int) -> list[float]:
    """None -> 1.0 for every adapter; one number -> it for every adapter; a list -> one per adapter (a list of one
    applies to all). Each in [0, MAX_SCALE]."""
    if adapter_scales is None:
        return [1.0] * count
    if not count and not (isinstance(adapter_scales, Sequence) and not adapter_scales):
        raise ValueError("adapter_scales given without adapters")
    if isinstance(adapter_scales, (str, bytes)) or not isinstance(adapter_scales, Sequence):
        scales = [adapter_scales] * count
    else:
        scales = list(adapter_scales)
        if len(scales) == 1:
            scales = scales * count
        elif len(scales) != count:
            raise ValueError(f"adapter_scales has {len(scales)} values for {count} adapters; give one scale for all "
                             "or one per adapter")
    return [check_float("adapter scale", s, 0.0, MAX_SCALE) for s in scales]


def adapter_fingerprint(folder: str | os.PathLike) -> str:
    """`core.weights.state_fingerprint` of an adapter folder's own weights (the LoRA A/B tensors)."""
    from soundsmith.core.files import one_line
    from soundsmith.core.weights import read_state_dict, state_fingerprint
    from soundsmith.gen.adapters import WEIGHTS_FILE

    path = Path(folder) / WEIGHTS_FILE
    try:
        return state_fingerprint(read_state_dict(path))
    except Exception as err:  # noqa: BLE001 - safetensors' own error on a damaged file is not a ValueError
        raise ValueError(f"{path}: not a readable adapter weights file ({type(err).__name__}: "
                         f"{one_line(err, 160)})") from None


def resolve_adapters(adapters: str | os.PathLike | Sequence[str | os.PathLike] | None, adapter_scales: Any = None,
                     *, components: Mapping[str, str] | None = None, backend: str = "",
                     where: str | os.PathLike = "") -> list[AdapterChoice]:
    """Check `adapters` and `adapter_scales` before any model loads; one-line errors.

    Args:
        adapters: an adapter folder or a list of them (None or []: none).
        adapter_scales: None (1 each), one number for all, or one per adapter; each in [0, MAX_SCALE].
        components: the backend's adaptable components (`Pipeline.adapter_components`); an adapter for another
            component is refused, naming the backend and the model folder `where`. None: not checked here.
    """
    from soundsmith.gen.adapters import read_adapter

    folders = adapter_list(adapters)
    scales = scale_list(adapter_scales, len(folders))
    chosen, seen = [], {}
    for folder, scale in zip(folders, scales):
        if not isinstance(folder, (str, os.PathLike)) or not str(folder).strip():
            raise ValueError(f"adapter folder must be a path, got {folder!r}")
        info = read_adapter(folder)
        key = os.path.realpath(info.folder)
        if key in seen:
            raise ValueError(f"adapter {folder} is given twice (also as {seen[key]}); give it once with the scale "
                             "you want")
        seen[key] = folder
        if components is not None and info.component not in components:
            what = f"the {backend} model" if backend else "this model"
            have = ", ".join(components) or "none"
            raise ValueError(f"{info.folder}: an adapter for the {info.component}, which {what}"
                             f"{' in ' + str(where) if where else ''} does not have (its adaptable parts: {have})")
        chosen.append(AdapterChoice(info=info, scale=scale, fingerprint=adapter_fingerprint(info.folder)))
    return chosen


def apply_adapters(pipe: Any, adapters: Sequence[AdapterChoice] | Any, adapter_scales: Any = None) -> Any:
    """Inject `adapters` (`resolve_adapters`' choices, or folders with `adapter_scales`) into `pipe`'s components in
    place, record them in `pipe.adapters` and return `pipe`. Every adapter's base is checked before any is
    injected, so a refused one leaves the pipeline as it was."""
    from soundsmith.gen.adapters import check_adapter_base, component_of, load_adapter

    components = getattr(pipe, "adapter_components", {}) or {}
    adapters = [adapters] if isinstance(adapters, AdapterChoice) else adapter_list(adapters)
    if not all(isinstance(a, AdapterChoice) for a in adapters):
        adapters = resolve_adapters(adapters, adapter_scales, components=components, backend=pipe.backend,
                                    where=getattr(pipe, "name_or_path", ""))
    if not adapters:
        return pipe
    where = getattr(pipe, "name_or_path", "") or type(pipe).__name__
    plan = []
    for choice in adapters:  # 1. every check first
        attr = components.get(choice.component)
        if attr is None:
            raise ValueError(f"{choice.info.folder}: an adapter for the {choice.component}, which the {pipe.backend} "
                             f"model {where} does not have (its adaptable parts: {', '.join(components) or 'none'})")
        model = getattr(pipe, attr, None)
        if model is None:
            raise ValueError(f"{choice.info.folder}: an adapter for the {choice.component}, which the {pipe.backend} "
                             f"model {where} does not have (it was saved without one)")
        base = pipe.part_fingerprint(attr)  # memoised: the weights before any adapter, as loading checked them
        check_adapter_base(choice.info, component_of(model), base)
        plan.append((choice, model, base))
    for choice, model, base in plan:  # 2. inject
        with warnings.catch_warnings():  # peft warns at a model's second adapter; several are what was asked for
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            load_adapter(model, choice.info.folder, scale=choice.scale, expect_fingerprint=base)
    pipe.adapters = [*getattr(pipe, "adapters", []), *(choice.record() for choice, _, _ in plan)]
    _forget_fingerprint(pipe)
    return pipe


def merge_adapters(pipe: Any) -> Any:
    """Fold every loaded adapter into its component's weights (no adapter layers left; peft is not needed to run
    or load the result) and clear `pipe.adapters`; the merged components get their own fingerprints."""
    from soundsmith.gen.adapters import has_lora, merge_adapter

    for attr in dict.fromkeys((getattr(pipe, "adapter_components", {}) or {}).values()):
        model = getattr(pipe, attr, None)
        if model is not None and has_lora(model):
            merge_adapter(model)
            pipe.__dict__.get("_part_fingerprints", {}).pop(attr, None)
    pipe.adapters = []
    _forget_fingerprint(pipe)
    return pipe


def save_merged(pipe: Any, source: str | os.PathLike, out: str | os.PathLike, *,
                dtype: str | None = None) -> Path:
    """Merge `pipe`'s adapters (loaded from model folder `source`) and write a complete model folder `out` that
    `load_pipeline` loads: our layout for our folders (`save_pretrained`), or, for a diffusers AudioLDM / MusicLDM
    folder (model_index.json), that folder with its UNet replaced by the merged one in diffusers' own layout
    (`UNet2DConditionModel.save_pretrained`), so diffusers' pipeline loads it too. `out` must not exist (or be an
    empty folder); the folder is written beside it and renamed into place, so a failure leaves nothing.

    `dtype`: "fp16" to store the weights in half precision (default: float32, as merged)."""
    from soundsmith.core.files import check_writable_folder

    source, out = Path(source), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not empty; give a new folder")
    if os.path.realpath(out) == os.path.realpath(source):
        raise ValueError(f"--out {out} is the model folder itself; give a new folder")
    records = list(getattr(pipe, "adapters", []))
    if not records:
        raise ValueError("no adapters to merge: give at least one adapter")
    diffusers_folder = (source / "model_index.json").is_file() and not (source / "config.json").is_file()
    if diffusers_folder and set(r["component"] for r in records) != {"unet"}:
        raise ValueError(f"{source} is a diffusers folder: only UNet adapters merge into it")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    check_writable_folder(parent)
    merge_adapters(pipe)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        if diffusers_folder:
            _write_diffusers_folder(pipe, source, tmp, dtype)
        else:
            pipe.save_pretrained(tmp, dtype=dtype)
        write_json(tmp / MERGE_RECORD, {"base_model": str(source), "adapters": records,
                                        "layout": "diffusers" if diffusers_folder else "soundsmith"})
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_diffusers_folder(pipe: Any, source: Path, folder: Path, dtype: str | None) -> None:
    """Copy every part of the diffusers folder but the UNet, then write the merged UNet as diffusers does."""
    import torch
    from soundsmith.core.runtime import resolve_dtype

    for entry in source.iterdir():
        if entry.name == "unet":
            continue
        target = folder / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copy2(entry, target)
    unet = pipe.unet
    previous = next(unet.parameters()).dtype
    want = torch.float32 if dtype is None else resolve_dtype(dtype)
    try:
        unet.to(dtype=want)
        unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    finally:
        unet.to(dtype=previous)


def _forget_fingerprint(pipe: Any) -> None:
    """The pipeline's fingerprint and watermark payload are computed again (they cover the adapters)."""
    pipe._fingerprint = None
    pipe._watermark_payload = None
