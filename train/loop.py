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
before; `save_run_checkpoint` writes the objects a loop hands it and the run record (component,
config) beside them, so checkpoint contents and names stay the loops' own.

Every loop's `train` takes these arguments (its docstring adds its own, and its default config):

    config: JSON config file (default: `train/configs/<component>.json`; on resume: the run's config.json).
    data: corpus folder (train split for training, valid split for validation).
    out: run folder.
    resume: continue from the newest checkpoint in `out`.
    max_steps: stop once this many optimizer steps are done (default: the config's max_steps).
    overrides: "key=value" strings or a dict applied on top of the config file.
    force_change: on resume, accept settings that change the run (logged in OUT/config_changes.jsonl).

and every gradient-trained component's config extends `RunConfig`: seed, step budget, batch, AdamW +
LR schedule, clipping, the log/eval/save cadence and the model's fields, declared once here (`adamw`
and `lr_scheduler` read them). The fits (kmeans, mel-rvq, mel-adapter) extend `config.Config`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .checkpoint import EpochIndexed, ResumableSampler, load_checkpoint, resume_point, save_checkpoint
from .config import Config, bounded, config_to_dict, load_config
from .metrics_log import MetricsLogger, progress_bar
from .run_folder import RunFolder
from .schedules import SCHEDULES, make_scheduler

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config


@dataclass
class RunConfig(Config):
    """The fields every gradient-trained component's config has, with the same meaning. Steps are
    optimizer steps. A component's config extends it; a keyword of its class statement gives one of
    these fields another default (type and range stay these), a field in its body is its own:

        @dataclass
        class VAETrainConfig(RunConfig, warmup_steps=100):
            kl_weight: float = bounded(1e-6, 0.0)

    A field redeclared in the body (another range) keeps its place.
    """

    seed: int = bounded(0, 0, 2**63 - 1)
    max_steps: int = bounded(2000, 1)  # the LR schedule spans this; --max-steps may stop earlier
    batch_size: int = bounded(8, 1)  # examples per process per micro-step
    lr: float = bounded(3e-4, 0.0, 1.0, low_open=True)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = bounded(0.0, 0.0, 1.0)
    schedule: str = bounded("cosine", choices=SCHEDULES)
    warmup_steps: int = bounded(0, 0)
    min_lr_ratio: float = bounded(0.1, 0.0, 1.0)  # the schedule decays to lr * min_lr_ratio
    clip_grad_norm: float | None = bounded(1.0, 0.0, low_open=True)  # a guard against spikes; None: off
    log_every: int = bounded(10, 1)
    eval_every: int = bounded(250, 1)
    save_every: int = bounded(250, 1)
    keep_last: int = bounded(3, 1)  # checkpoints kept
    model: dict = field(default_factory=dict)  # the model config's fields (the component names the class)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"field 'betas' must be two numbers in [0, 1), got {self.betas}")


def adamw(params: Iterable[Any], cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over `params` (tensors, or param groups that may set their own weight decay) with the
    run's lr, betas and weight decay."""
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_scheduler(optimizer: Any, cfg: RunConfig, total_steps: int | None = None) -> Any:
    """The run's LR schedule for `optimizer`: `cfg.schedule` after `cfg.warmup_steps` of warm-up, down to
    `lr * cfg.min_lr_ratio` at `total_steps` (default `cfg.max_steps`, the config's budget and not
    --max-steps: a run stopped early and continued follows the same curve)."""
    return make_scheduler(optimizer, kind=cfg.schedule, warmup_steps=cfg.warmup_steps,
                          total_steps=cfg.max_steps if total_steps is None else total_steps, min_ratio=cfg.min_lr_ratio)


def optimizer_with_schedule(params: Iterable[Any], cfg: RunConfig, total_steps: int | None = None
                            ) -> tuple[torch.optim.AdamW, Any]:
    """`adamw` over `params` and its `lr_scheduler`: what every loop builds for each model it trains."""
    optimizer = adamw(params, cfg)
    return optimizer, lr_scheduler(optimizer, cfg, total_steps)


# ------------------------------------------------------------------------------------------- set-up


class RunStart(NamedTuple):
    """What `open_run` hands a loop: the run folder's path, the checkpoint to resume from (None: a fresh
    run), the config file read, the config, the `RunFolder` (not yet opened) and the step to stop at."""

    out: Path
    ckpt: Path | None
    config: Path
    cfg: Any
    run: RunFolder
    stop_at: int


def open_run(config_cls: Any, config: str | os.PathLike | None, default: Path, *, data: str | os.PathLike,
             out: str | os.PathLike, resume: bool, max_steps: int | None, overrides: Any, force_change: bool
             ) -> RunStart:
    """A loop's first step: the resume point in `out` (on resume: its newest checkpoint and config.json;
    `config` None: `default`), the `config_cls` config read from it with `overrides` applied, the
    `RunFolder` that checks it against the run's record, and the step to stop at (`max_steps`, or the
    config's). Nothing is written yet: `run.open` creates and locks the folder."""
    out, ckpt, config = resume_point(out, resume, config, default)
    cfg = load_config(config_cls, config, overrides)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    return RunStart(out, ckpt, config, cfg, run, cfg.max_steps if max_steps is None else max_steps)


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


def start_accelerator(cfg: Any) -> tuple[Any, bool, Any]:
    """`make_accelerator(cfg.mixed_precision)`, then `set_seed(cfg.seed)` so that every process builds
    the same initial weights. Returns (accelerator, is_main, device)."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(cfg.mixed_precision)
    set_seed(cfg.seed)  # identical initial weights in every process
    return accelerator, accelerator.is_main_process, accelerator.device


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


class Resumed(NamedTuple):
    """What `resume_clips` hands a loop: optimizer steps done, batches drawn, the sampler, the batches, the
    metrics logger and the progress bar."""

    step: int
    batches: int
    sampler: ResumableSampler
    batch_iter: Iterator[dict[str, Any]]
    logger: MetricsLogger
    bar: Any


def resume_clips(ckpt: Path | None, objects: Mapping[str, Any], accelerator: Any, train_set: Any, cfg: Any,
                 run: RunFolder, stop_at: int, desc: str) -> Resumed:
    """The step before the loop of a loop over random clips of `train_set`: reseed each process on its
    own (`set_seed(cfg.seed, device_specific=True)`: the draws of the steps differ between processes),
    `restore` `objects` from `ckpt`, continue the data order where it stopped (`cfg.batch_size` clips per
    process and micro-step, `cfg.num_workers` loader workers), open the run folder (after the data and
    models are checked) and start the metrics logger and the progress bar (`desc`) at the step reached."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed, device_specific=True)
    step, batches = restore(ckpt, objects, accelerator)
    sampler = ResumableSampler(len(train_set), cfg.batch_size, seed=cfg.seed, num_replicas=accelerator.num_processes,
                               rank=accelerator.process_index, start=batches)
    batch_iter = clip_batches(train_set, sampler, num_workers=cfg.num_workers, seed=cfg.seed)
    out = run.open(accelerator)  # creates and locks OUT
    is_main = accelerator.is_main_process
    logger = MetricsLogger(out, enabled=is_main, resume_step=step if ckpt is not None else None)
    return Resumed(step, batches, sampler, batch_iter, logger, progress_bar(stop_at, step, enabled=is_main, desc=desc))


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


def save_run_checkpoint(out: Path, step: int, objects: Mapping[str, Any], component: str, cfg: Any, *,
                        data_position: Mapping[str, Any] | None = None, accelerator: Any = None,
                        **extra: Any) -> Path:
    """`save_checkpoint` of `objects` at `step`, keeping the newest `cfg.keep_last`, with the run's record
    beside them: `{"component": component, "config": <cfg as a dict>, **extra}` (a resume compares its
    config with that one)."""
    return save_checkpoint(out, step, objects, data_position=data_position, accelerator=accelerator,
                           keep_last=cfg.keep_last, extra={"component": component, "config": config_to_dict(cfg), **extra})


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
