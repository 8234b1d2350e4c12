"""What every training loop does the same way, as plain functions (no base class, no callbacks).

Each `train_*.py` stays one flat loop that reads top to bottom, as nanoGPT's train.py does; it calls
these where it would otherwise spell the same lines out again:

    accelerator = make_accelerator(cfg.mixed_precision)
    ...
    step, batches = restore(ckpt, objects, accelerator)  # (0, 0) on a fresh run
    batch_iter = clip_batches(train_set, sampler, num_workers=cfg.num_workers, seed=cfg.seed)
    running, clock = {}, start_clock()
    while step < stop_at:
        for micro in range(cfg.grad_accum):
            with no_sync(accelerator, model, sync=micro == cfg.grad_accum - 1), accelerator.autocast():
                ...
            accumulate(running, "loss", loss.item() / cfg.grad_accum)
        ...  # clip, step, EMA
        if due(step, cfg.log_every, stop_at):
            n = interval(step, cfg.log_every)
            logger.log(step, {**train_means(running, n, accelerator), **step_times(clock, n)})
        if due(step, cfg.eval_every, stop_at): ...
        if due(step, cfg.save_every, stop_at): ...
    return finish(out, ema_model, is_main=is_main, logger=logger, accelerator=accelerator)

None of them draws from a random generator, so a loop that uses them resumes as bit-exactly as
before, and none writes into a checkpoint: checkpoint contents and names are the loops' own.

Every loop's `train` takes these arguments (its docstring adds its own, and its default config):

    config: JSON config file (default: `train/configs/<component>.json`; on resume: the run's config.json).
    data: corpus folder (train split for training, valid split for validation).
    out: run folder.
    resume: continue from the newest checkpoint in `out`.
    max_steps: stop once this many optimizer steps are done (default: the config's max_steps).
    overrides: "key=value" strings or a dict applied on top of the config file.
    force_change: on resume, accept settings that change the run (logged in OUT/config_changes.jsonl).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import EpochIndexed, load_checkpoint
from .metrics_log import MetricsLogger

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- set-up


def model_config(config_cls: Any, fields: Mapping[str, Any], where: str | os.PathLike) -> Any:
    """`config_cls.from_dict(fields)` for the run config's `model` field; a mistake in it is refused in
    one line that names the config file and the field."""
    try:
        return config_cls.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'model': {err}") from None


def make_accelerator(mixed_precision: str) -> Any:
    """An `accelerate.Accelerator` on the GPU when there is one, with `mixed_precision`; on a CPU
    without it (fp32), whatever the config says, so one config serves both."""
    from accelerate import Accelerator  # heavy: imported when a run starts, not with the module

    on_gpu = torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision if on_gpu else "no", cpu=not on_gpu)


def restore(ckpt: Path | None, objects: Mapping[str, Any], accelerator: Any = None) -> tuple[int, int]:
    """Restore `objects` (and the RNG states) from `ckpt`; return (optimizer steps done, batches drawn).

    A fresh run (`ckpt` None) starts at (0, 0). Call it after seeding: the restored RNG states replace
    the seeded ones, so a resumed run draws what the uninterrupted one would have.
    """
    if ckpt is None:
        return 0, 0
    meta = load_checkpoint(ckpt, objects, accelerator=accelerator)
    log.info("resumed %s at step %d", ckpt, meta["step"])
    return meta["step"], meta["data_position"]["batches"]


def clip_batches(dataset: Any, sampler: Any, *, num_workers: int, seed: int) -> Iterator[dict[str, Any]]:
    """Collated batches of `dataset` in the order of `sampler` (a `ResumableSampler`), endlessly.

    Items are fetched with the sampler's epoch (`EpochIndexed`), so a random crop depends on
    (seed, epoch, index) and not on which worker reads it. The loader gets its own seeded generator:
    its worker seeds never draw from the global RNG the checkpoint restores.
    """
    from .datasets import collate

    loader = torch.utils.data.DataLoader(EpochIndexed(dataset), batch_sampler=sampler, collate_fn=collate,
                                         num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    return iter(loader)


def validation_split(data: str | os.PathLike, **dataset_args: Any) -> Any:
    """The corpus's valid split as an `AudioCaptionDataset`, or its train split when it has none, so a
    corpus without one still trains; the warning says the validation numbers come from training clips."""
    from .datasets import AudioCaptionDataset

    try:
        return AudioCaptionDataset(data, split="valid", **dataset_args)
    except ValueError as err:
        log.warning("no validation split (%s); validating on training clips", err)
        return AudioCaptionDataset(data, split="train", **dataset_args)


def validation_batch(data: str | os.PathLike, sample_rate: int, seconds: float, num: int, channels: int = 1
                     ) -> Tensor:
    """The first `num` clips of the valid split, center crops of `seconds`, as one batch `[N, C, T]`
    kept in memory: every evaluation of a run sees the same audio."""
    from .datasets import collate

    valid_set = validation_split(data, sample_rate=sample_rate, channels=channels, crop_seconds=seconds,
                                 random_crop=False)
    return collate([valid_set[i] for i in range(min(num, len(valid_set)))])["wave"]  # [N, C, T]


# ---------------------------------------------------------------------------------------- each step


def no_sync(accelerator: Any, *models: Any, sync: bool) -> ExitStack:
    """Skip the gradient all-reduce of `models` unless `sync` (pass True on the last micro-step of an
    optimizer step): the micro-steps before it only accumulate. A no-op with one process."""
    stack = ExitStack()
    if not sync:
        for model in models:
            stack.enter_context(accelerator.no_sync(model))
    return stack


def step_optimizer(model: Any, optimizer: Any, scheduler: Any, clip_grad_norm: float | None,
                   accelerator: Any = None) -> Tensor:
    """End an optimizer step after its last micro-step's backward: clip the accumulated gradients of
    `model` to `clip_grad_norm` (None: no clipping, the norm is still measured for the logs), step the
    optimizer and the LR schedule, zero the gradients. Returns the norm before clipping (a scalar)."""
    limit = clip_grad_norm or math.inf
    if accelerator is None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    else:  # unscales fp16 gradients before measuring them
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), limit)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def accumulate(sums: dict[str, float], key: str, value: float) -> None:
    """`sums[key] += value`, starting from 0: the running sums of a logging interval."""
    sums[key] = sums.get(key, 0.0) + value


# ----------------------------------------------------------------------------------------- cadence


def due(step: int, every: int, stop_at: int) -> bool:
    """Whether a cadence of `every` steps (logging, evaluation, checkpoints) fires after step `step`:
    on its multiples, and at the run's last step so a run always ends logged, evaluated and saved."""
    return step % every == 0 or step == stop_at


def interval(step: int, every: int) -> int:
    """How many steps the interval that ends at `step` spans: `every`, or fewer for the last, short one."""
    return every if step % every == 0 else step % every


def train_means(sums: Mapping[str, float], n: int, accelerator: Any = None) -> dict[str, float]:
    """`{"train/<key>": sum / n}`, averaged over the processes when an accelerator is given, in the
    order of `sums` (the order of the metrics.jsonl columns)."""
    if accelerator is None:
        return {f"train/{k}": v / n for k, v in sums.items()}
    # a tensor on the device: the all-reduce (NCCL on GPUs) takes nothing else
    return {f"train/{k}": accelerator.reduce(torch.tensor(v / n, device=accelerator.device), "mean").item()
            for k, v in sums.items()}


def start_clock() -> tuple[float, float]:
    """(wall, CPU) time now: the start of a logging interval for `step_times`."""
    return time.perf_counter(), time.process_time()


def step_times(clock: tuple[float, float], n: int) -> dict[str, float]:
    """Wall and CPU seconds per step since `clock` over `n` steps (CPU time tells a slow step from a
    starved one on a shared machine)."""
    wall, cpu = time.perf_counter() - clock[0], time.process_time() - clock[1]
    return {"time/s_per_step": wall / n, "time/cpu_s_per_step": cpu / n}


# --------------------------------------------------------------------------------------- the end


def finish(out: Path, model: Any, *, is_main: bool, logger: MetricsLogger, accelerator: Any = None,
           dtype: Any = torch.float16) -> Path:
    """End a run: the main process writes `model` with `save_pretrained` to `OUT/export` (in fp16 by
    default); every process closes its logger and waits for the others. Returns `OUT/export`.

    `model` holds the weights to ship already (EMA copied in, norms folded); on the other processes
    it is not used and may be None.
    """
    export = out / "export"
    if is_main:
        model.save_pretrained(export, dtype=dtype)
        log.info("exported %s", export)
    logger.close()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return export
