"""Training checkpoints: everything needed to continue a run bit-exactly, written atomically.

A checkpoint is a folder `RUN/checkpoints/step-000001000/` holding
    state.safetensors   every tensor: model and EMA weights, optimizer moments, RNG states
    checkpoint.json     everything else (step, data position, optimizer/scheduler scalars, python and
                        numpy RNG states, the run config) with each tensor replaced by its key in
                        state.safetensors, plus the byte size of state.safetensors
Loading never unpickles: tensors come from safetensors and the rest from JSON (accelerate's
`save_state` pickles RNG and optimizer state and writes in place, which is why we do not use it).

Atomic: the folder is first written as `RUN/checkpoints/.tmp-step-.../`, flushed to disk, then renamed,
so a kill at any moment leaves the previous checkpoints as they were; the last `keep_last` are kept.
Under `accelerate launch` every process calls `save_checkpoint` (the RNG states of all processes are
gathered), only the main process writes; every process reads on resume and takes its own RNG state.

`ResumableSampler` is the data position: the batch order is a pure function of (seed, epoch), so the
number of batches consumed is all a checkpoint needs to continue in the same order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

FORMAT = "soundsmith-train-checkpoint/1"
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (corrupt, truncated) or does not fit the models being trained."""


# ------------------------------------------------------------------------------------------- saving


def save_checkpoint(run_dir: str | os.PathLike, step: int, objects: Mapping[str, Any], *,
                    data_position: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    keep_last: int = 3, accelerator: Any = None) -> Path:
    """Save a checkpoint of `objects` at optimizer step `step`; return its folder.

    Args:
        run_dir: the run folder; checkpoints go to `run_dir/checkpoints/step-XXXXXXXXX/`.
        step: optimizer steps done so far.
        objects: name -> anything with `state_dict()` (unwrapped models, optimizers, LR schedulers,
            EMA, a grad scaler). A GAN passes e.g. generator, discriminator, opt_g, opt_d, ...
        data_position: JSON-ready dict, e.g. `ResumableSampler.state_dict()`.
        extra: JSON-ready dict kept beside (e.g. the run config, the component name).
        keep_last: how many checkpoints to keep (older ones are deleted after a successful save).
        accelerator: an `accelerate.Accelerator` when training with several processes; None for one.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    rng = capture_rng_state()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rng_states = gather_object([rng])  # one entry per process, in process order
    else:
        rng_states = [rng]
    folder = checkpoints_dir(run_dir) / f"step-{step:09d}"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main:
        tree = {name: obj.state_dict() for name, obj in objects.items()}
        tree["rng"] = rng_states
        tensors: dict[str, Tensor] = {}
        skeleton = _flatten(tree, "", tensors)
        meta = {
            "format": FORMAT,
            "step": int(step),
            "objects": sorted(objects),
            "num_processes": len(rng_states),
            "data_position": dict(data_position or {}),
            "extra": dict(extra or {}),
            "state": skeleton,
        }
        _write_atomically(folder, tensors, meta)
        prune_checkpoints(run_dir, keep_last)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder


def _write_atomically(folder: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / STATE_FILE))
        meta["files"] = {STATE_FILE: (tmp / STATE_FILE).stat().st_size}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for name in (STATE_FILE, META_FILE):
            _fsync(tmp / name)
        if folder.exists():  # re-saving a step (e.g. after a resume): swap the old folder out first
            old = folder.parent / f".old-{folder.name}-{os.getpid()}"
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            os.rename(tmp, folder)  # the commit point: the folder appears complete or not at all
        _fsync(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders of a killed save are skipped)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftovers of killed saves."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for pattern in (".tmp-step-*", ".old-step-*"):
        for leftover in checkpoints_dir(run_dir).glob(pattern):
            if not leftover.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(leftover, ignore_errors=True)


# ------------------------------------------------------------------------------------------ loading


def load_checkpoint(path: str | os.PathLike, objects: Mapping[str, Any], *, accelerator: Any = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint folder into `objects` (the same names as when saved); restore the RNG states.

    Models and EMA are checked key by key and shape by shape first, so nothing is half-loaded.
    Returns the metadata: `step`, `data_position`, `extra`, `num_processes`.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        CheckpointError (a ValueError): the files are corrupt or truncated, or the checkpoint lacks an
            object or belongs to another architecture; the message is one line naming the file and key.
    """
    folder = Path(path)
    meta, tensors = read_checkpoint(folder)
    state_file = folder / STATE_FILE
    tree = _unflatten(meta["state"], tensors, state_file)
    for name in objects:
        if name not in tree:
            raise CheckpointError(f"{state_file}: missing object '{name}' (has: {', '.join(meta['objects'])})")
    # check every module-like object before loading any, so a wrong checkpoint changes nothing
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            _check_keys(state_file, name, tree[name], obj.state_dict())
        elif hasattr(obj, "shadow"):  # EMA
            _check_keys(state_file, f"{name}.shadow", tree[name]["shadow"], obj.shadow)
    for name, obj in objects.items():
        try:
            obj.load_state_dict(tree[name])
        except (KeyError, ValueError, RuntimeError) as err:
            message = " ".join(str(err).split())
            raise CheckpointError(f"{state_file}: object '{name}' does not fit ({message})") from None
    if restore_rng:
        rank = accelerator.process_index if accelerator is not None else 0
        states = tree["rng"]
        if len(states) != (accelerator.num_processes if accelerator is not None else 1):
            log.warning("%s was saved by %d processes, resuming with a different number: the data order is "
                        "kept, but random draws will not match the original run", folder, len(states))
        restore_rng_state(states[rank % len(states)])
    return {k: meta[k] for k in ("step", "data_position", "extra", "num_processes")}


def read_checkpoint(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    """The metadata and the tensors of a checkpoint folder, with one-line errors for broken files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    meta_file, state_file = folder / META_FILE, folder / STATE_FILE
    for f in (meta_file, state_file):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {f}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file}: corrupt or truncated checkpoint metadata "
                              f"({' '.join(str(err).split())})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_file}: not a soundsmith training checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    for key in ("step", "objects", "state", "files", "data_position", "extra", "num_processes"):
        if key not in meta:
            raise CheckpointError(f"{meta_file}: corrupt checkpoint metadata, missing key '{key}'")
    expected = meta["files"].get(STATE_FILE)
    size = state_file.stat().st_size
    if expected is not None and size != expected:
        raise CheckpointError(f"{state_file}: truncated or corrupt checkpoint ({size} bytes, expected {expected})")
    try:
        tensors = load_file(str(state_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{state_file}: corrupt or truncated checkpoint ({' '.join(str(err).split())})") from None
    return meta, tensors


def _check_keys(file: Path, name: str, saved: Mapping[str, Any], current: Mapping[str, Tensor]) -> None:
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        parts = []
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            parts.append(f"missing key '{name}.{missing[0]}'{more}")
        if unexpected:
            more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
            parts.append(f"unexpected key '{name}.{unexpected[0]}'{more}")
        raise CheckpointError(f"{file}: checkpoint of another architecture: {'; '.join(parts)}")
    for key, value in current.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{file}: checkpoint of another architecture: key '{name}.{key}' has shape "
                                  f"{tuple(saved[key].shape)}, the model has {tuple(value.shape)}")


# --------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states of this process, JSON + tensors only."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np.asarray(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- tree <-> safetensors + JSON

# A state tree (nested dicts/lists/tuples of tensors and scalars) is split into a flat dict of tensors,
# keyed by their path, and a JSON skeleton where each tensor is {"__tensor__": path}. Tuples and dicts
# with non-string keys (optimizer state is keyed by parameter index) are tagged so they come back as
# they were; floats go through JSON's repr, which round-trips them exactly.


def _flatten(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        # a private contiguous CPU copy: safetensors refuses tensors that share memory (tied weights)
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": path}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{path}/{k}" if path else k, tensors) for k, v in obj.items()}
        return {"__dict__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at '{path}'")


def _unflatten(obj: Any, tensors: Mapping[str, Tensor], file: Path) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"{file}: corrupt checkpoint, missing tensor '{key}'")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors, file) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors, file) for k, v in obj["__dict__"]}
        return {k: _unflatten(v, tensors, file) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, file) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ data position


class ResumableSampler:
    """Batches of dataset indices in an order that depends only on (seed, epoch): the data position.

    Each optimizer micro-step takes one global batch of `batch_size * num_replicas` indices from the
    epoch's permutation; process `rank` gets its slice of `batch_size`. Epochs drop the last partial
    global batch. `start` is the number of global batches already consumed, so a resumed run sees
    exactly the batches the uninterrupted run would have. Infinite: training stops on steps, not epochs.

    Each yielded item is a pair `(index, epoch)`; wrap the dataset in `EpochIndexed` so that it sets
    the epoch before reading the item: `AudioCaptionDataset` seeds its random crop from (seed, epoch,
    index), so crops replay exactly on resume and in any number of data workers.

    Args:
        num_items: dataset size.
        batch_size: items per process per micro-step.
        seed: shuffling seed (the run seed).
        num_replicas, rank: process count and this process's index (accelerate's num_processes, process_index).
        start: global batches already consumed (from `state_dict()["batches"]`).
        shuffle: False keeps dataset order (validation).
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 start: int = 0, shuffle: bool = True):
        self.global_batch = batch_size * num_replicas
        if num_items < self.global_batch:
            raise ValueError(f"the dataset has {num_items} clips, fewer than one batch of {batch_size} x "
                             f"{num_replicas} processes")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.num_replicas, self.rank, self.shuffle = num_replicas, rank, shuffle
        self.batches_per_epoch = num_items // self.global_batch
        self.start = start

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)

    def position(self, batches: int) -> dict[str, int]:
        """JSON-ready data position after `batches` global batches."""
        return {"batches": batches, "epoch": batches // self.batches_per_epoch,
                "offset": batches % self.batches_per_epoch, "seed": self.seed}

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.start
        while True:
            epoch, offset = divmod(batches, self.batches_per_epoch)
            order = self.order(epoch)
            for b in range(offset, self.batches_per_epoch):
                lo = b * self.global_batch + self.rank * self.batch_size
                yield [(i, epoch) for i in order[lo:lo + self.batch_size].tolist()]
            batches = (epoch + 1) * self.batches_per_epoch


class EpochIndexed(torch.utils.data.Dataset):
    """Reads `dataset[index]` after `dataset.set_epoch(epoch)` for the keys `(index, epoch)` that
    `ResumableSampler` yields (each DataLoader worker has its own copy, so this is safe there too)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def resume_point(out: str | os.PathLike, resume: bool, config: str | os.PathLike | None,
                 default_config: str | os.PathLike) -> tuple[Path, Path | None, Path]:
    """Where a training run starts: (run folder, checkpoint to resume or None, config file to read).

    `--resume` needs a checkpoint in `out`; a fresh run refuses a folder that already holds one. With no
    config given, a resumed run reads its own saved config.json, a fresh run the component's default.
    `out` naming a file (or an audio file name), or a folder another process is using, is refused first.
    """
    from soundsmith.core.run_lock import check_folder_free, check_output_dir_arg

    out = check_output_dir_arg(out)
    check_folder_free(out)  # before any long work; the run takes the lock itself in RunFolder.open
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if not resume and latest_checkpoint(out) is not None:
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue it or choose another --out")
    if config is None:
        config = out / "config.json" if resume and (out / "config.json").is_file() else default_config
    return out, ckpt, Path(config)
