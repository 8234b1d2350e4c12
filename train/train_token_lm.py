"""Train one of the token backend's three LMs (gen/token_lm.py) on cached tokens.

    soundsmith train semantic-lm --data data/corpus --out runs/semantic-lm [--config my.json] [--resume] [--max-steps N]
    soundsmith train coarse-lm   --data data/corpus --out runs/coarse-lm ...
    soundsmith train fine-lm     --data data/corpus --out runs/fine-lm ...

1. tokens: the train and valid splits through the parts the config names (CLAP + conditioning RVQ for the
   conditioning tokens, the k-means for semantic tokens, the codec for codes), computed once and cached
   under `cache_dir` (train/token_cache.py), shared by the three stages and by resumed runs.
2. per step: a batch of random crops of one window (`short_crop_prob` of the batches shorter, so the LM also
   sees the short sequences of short generations); each clip's condition drawn at random: the null prefix
   with `cond_dropout` (what classifier-free guidance needs), else one of its captions' text tokens with
   `text_cond_prob` (what inference feeds), else its audio tokens (MuLan); cross-entropy over the stage's
   targets; clip; AdamW; EMA. The crops and conditions come from a generator seeded by (seed, batch
   number), the data position is the batch count, dropout draws from the checkpointed global RNG: a
   resumed run continues bit-exactly.
3. every N steps: loss and accuracy of the EMA weights on fixed valid crops (the semantic and coarse
   stages also with text conditions and with the null prefix: how much the condition helps); checkpoint.
4. export the EMA weights in fp16 to OUT/export (`TokenLM.save_pretrained`), the parts' fingerprints in
   the config's `trained_with`, so a pipeline refuses other tokenizers.

Fine-tuning (train/finetune.py): with `init` (`--init MODEL_DIR`, a token model folder such as
models/default-tokens) the LM starts from that folder's (its config too: sizes, window), and the CLAP,
conditioning RVQ, k-means and codec come from it; the export is then a complete model folder linking the
folder's other parts, or with `lora_rank` the LoRA adapter folder. Without --config such a run reads
`train/configs/lm-finetune.json` / `lm-lora.json`.

Run folder: config.json, metrics.jsonl, tensorboard/, checkpoints/, export/.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import releases_folder_locks

from .checkpoint import ResumableSampler, resume_point
from .config import CONFIGS, bounded, load_config
from .datasets import clip_beats, clip_tempi
from .ema import EMA
from .finetune import (
    AdapterExport,
    FinetuneConfig,
    ModelFolderExport,
    check_lora_options,
    default_config,
    growth,
    ignore_fields,
    load_init,
    prepare_model,
    trainable,
)
from .loop import (
    accumulate,
    due,
    finish,
    interval,
    no_sync,
    optimizer_with_schedule,
    restore,
    save_run_checkpoint,
    start_accelerator,
    step_optimizer,
    train_means,
)
from .metrics_log import MetricsLogger, progress_bar
from .run_folder import RunFolder

log = logging.getLogger(__name__)

STAGE_KINDS = {"semantic": ("cond", "semantic"), "coarse": ("cond", "semantic", "codes"), "fine": ("codes",)}
# TokenLMConfig fields the parts decide (set from them; a config may not contradict them)
DERIVED = ("stage", "cond_levels", "cond_codebook_size", "semantic_vocab", "acoustic_codebook_size",
           "frames_per_semantic", "window", "frame_rate", "trained_with")


@dataclass
class TokenLMTrainConfig(FinetuneConfig, batch_size=16, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=100):
    """Everything an LM run needs besides the data and run folders: `RunConfig`'s fields (a batch of
    crops; betas as nanoGPT / MusicGen; weight decay on matrices only, as nanoGPT; `model`: TokenLMConfig
    fields), `FinetuneConfig`'s (init, LoRA), then the LM's own."""

    grad_accum: int = bounded(1, 1)
    ema_decay: float = bounded(0.999, 0.0, 0.999999)  # MusicGen: EMA of the weights; exported
    window_s: float = bounded(5.0, 0.0, 600.0, low_open=True)  # training crop = the LM's generation window
    short_crop_prob: float = bounded(0.1, 0.0, 1.0)  # share of batches cropped shorter (down to a quarter window)
    cond_dropout: float = bounded(0.3, 0.0, 1.0)  # null prefix instead of the condition (audiocraft: 0.3)
    text_cond_prob: float = bounded(0.5, 0.0, 1.0)  # of the conditioned crops, share taking a caption's tokens
    n_captions: int = bounded(4, 1, 64)  # captions per clip in the token cache (the stored one + redrawn)
    clap: str = "models/clap"  # the parts the tokens come from (model folders; with init: that folder's)
    cond_rvq: str = "models/default-tokens/cond_rvq"
    kmeans: str = "models/default-tokens/kmeans"
    codec: str = "models/default-tokens/codec"
    cache_dir: str = ""  # token cache root; "" = OUT/../token-cache (shared by runs side by side)
    cache_batch: int = bounded(16, 1)  # clips per tokenizer call while building the cache
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_valid_batches: int = bounded(4, 1)  # batches of valid crops (fixed) per evaluation
    # semantic LM with a tempo input (model field tempo_dim, gen/tempo.py): each music clip's own tempo, dropped to
    # "no tempo" with this probability (and with a dropped condition); with init, `tempo_reader` (a folder of
    # `soundsmith train tempo-reader`) is exported with the model so the pipeline reads tempo from prompts
    tempo_dropout: float = bounded(0.3, 0.0, 1.0)
    tempo_reader: str | None = None
    # semantic or coarse LM with a beat input (model field beat_dim, gen/tempo.py beat_features): each music clip's
    # own beat grid (its `beats` labels) at every token or frame, dropped to "no beat" with this probability (and
    # with a dropped condition); the pipeline builds the grid from the tempo its `tempo_reader` reads in the prompt
    beat_dropout: float = bounded(0.3, 0.0, 1.0)
    # with init and a growing model field (tempo_dim, beat_dim): train only the new input's weights, so prompts that
    # do not use it (no tempo named) are generated exactly as by the init model
    train_grown_only: bool = False


# ------------------------------------------------------------------------------------------- batches


class TokenCrops:
    """Crops of cached token rows for one stage; a batch is a pure function of (indices, rng).

    Lengths are in window units: semantic tokens (semantic stage) or codec frames (coarse, fine; a
    multiple of `frames_per_semantic` for the coarse stage, so semantic and acoustic crops align).
    """

    def __init__(self, stage: str, cache: dict[str, Any], lm: Any, *, cond_dropout: float = 0.0,
                 text_cond_prob: float = 0.0, short_crop_prob: float = 0.0, where: str = "data",
                 tempo: list[float | None] | None = None, tempo_dropout: float = 0.0,
                 beats: list[list[float] | None] | None = None, beat_dropout: float = 0.0):
        c = lm.config
        self.stage, self.cache, self.config = stage, cache, c
        # each cached clip's BPM, for a semantic LM with a tempo input (None: the batches carry no tempo)
        self.tempo = tempo if stage == "semantic" and getattr(c, "tempo_dim", 0) else None
        self.tempo_dropout = tempo_dropout
        # each cached clip's beat times, for a semantic or coarse LM with a beat input (None: the batches carry none)
        self.beats = beats if stage in ("semantic", "coarse") and getattr(c, "beat_dim", 0) else None
        self.beat_dropout = beat_dropout
        self.null = c.cond_codebook_size
        self.cond_dropout, self.text_cond_prob, self.short_crop_prob = cond_dropout, text_cond_prob, short_crop_prob
        self.multiple = c.frames_per_semantic if stage == "coarse" else 1
        r = c.frames_per_semantic
        if stage == "semantic":
            avail = [cache["semantic"].length(i) for i in range(len(cache["semantic"]))]
        elif stage == "coarse":
            avail = [min(cache["semantic"].length(i) * r, cache["codes"].length(i)) // r * r
                     for i in range(len(cache["codes"]))]
        else:
            avail = [cache["codes"].length(i) for i in range(len(cache["codes"]))]
        self.min_length = max(self.multiple, c.window // 4 // self.multiple * self.multiple)
        self.clips = [i for i, n in enumerate(avail) if n >= self.min_length]
        self.avail = avail
        if len(self.clips) < len(avail):
            log.warning("%s: %d of %d clips are shorter than %d %s and are left out", where,
                        len(avail) - len(self.clips), len(avail), self.min_length,
                        "tokens" if stage == "semantic" else "frames")
        if not self.clips:
            raise ValueError(f"{where}: no clip is long enough for the {stage} LM (need >= {self.min_length} "
                             f"{'tokens' if stage == 'semantic' else 'frames'})")

    def __len__(self) -> int:
        return len(self.clips)

    def batch(self, positions: list[int], rng: np.random.Generator, *, cond: str = "random") -> dict[str, Any]:
        """Crops of the clips at `positions` (indices into `self.clips`). cond: "random" (training draws),
        "audio", "text" (first caption) or "null"."""
        clips = [self.clips[p] for p in positions]
        m = self.multiple
        length = min(self.config.window, min(self.avail[i] for i in clips)) // m * m
        if cond == "random" and self.short_crop_prob > 0 and rng.random() < self.short_crop_prob:
            length = int(rng.integers(self.min_length // m, length // m + 1)) * m
        starts = [int(rng.integers(0, (self.avail[i] - length) // m + 1)) * m if cond == "random" else 0
                  for i in clips]
        batch: dict[str, Any] = {}
        if self.stage in ("semantic", "coarse"):
            batch["cond"] = torch.stack([self._cond(i, rng, cond) for i in clips])  # [B, Q]
            null = (batch["cond"] == self.null).all(dim=1).tolist()

            def kept(is_null: bool, dropout: float) -> bool:  # no tempo or beat with a null condition or dropped
                return not is_null and not (cond == "random" and rng.random() < dropout)

            if self.tempo is not None:  # [B, tempo_dim]
                from soundsmith.gen.tempo import tempo_features

                batch["tempo"] = tempo_features([self.tempo[i] if kept(is_null, self.tempo_dropout) else None
                                                 for i, is_null in zip(clips, null)])
            if self.beats is not None:  # [B, L, beat_dim]: each crop's own grid, from its first token or frame
                from soundsmith.gen.tempo import beat_features

                rate = self.config.frame_rate
                batch["beat"] = torch.stack([
                    beat_features([t - s / rate for t in self.beats[i]]
                                  if self.beats[i] is not None and kept(is_null, self.beat_dropout) else None,
                                  length, rate)
                    for i, s, is_null in zip(clips, starts, null)])
            r = self.config.frames_per_semantic if self.stage == "coarse" else 1
            sem = self.cache["semantic"]
            batch["semantic"] = torch.stack([sem.clip(i)[s // r: (s + length) // r] for i, s in zip(clips, starts)])
        if self.stage in ("coarse", "fine"):
            kc, kf = self.config.n_coarse, self.config.n_fine
            codes = torch.stack([self.cache["codes"].clip(i)[:, s:s + length] for i, s in zip(clips, starts)])
            batch["coarse"] = codes[:, :kc]  # [B, Kc, L]
            if self.stage == "fine":
                batch["fine"] = codes[:, kc:kc + kf]  # [B, Kf, L]
        return batch

    def _cond(self, i: int, rng: np.random.Generator, mode: str) -> torch.Tensor:
        tokens = self.cache["cond"]
        if mode == "random":
            if rng.random() < self.cond_dropout:
                mode = "null"
            elif rng.random() < self.text_cond_prob:
                return tokens.text[i, int(rng.integers(tokens.text.shape[1]))]
            else:
                mode = "audio"
        if mode == "null":
            return torch.full((self.config.cond_levels,), self.null, dtype=torch.long)
        return tokens.text[i, 0] if mode == "text" else tokens.audio[i]


# --------------------------------------------------------------------------------------------- train


@releases_folder_locks
def train(stage: str, config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike | None = None, resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) the `stage` LM ("semantic", "coarse" or "fine"); return the export folder.

    `stage` picks the LM; the other arguments are every loop's (train/loop.py), with `config` defaulting
    to `train/configs/<stage>-lm.json` (with `init` among the overrides: `lm-finetune.json`, or `lm-lora.json`
    with `lora_rank`) and `out` to `runs/<stage>-lm`.
    """
    from accelerate.utils import set_seed
    from soundsmith.gen.token_lm import STAGES, build_lm

    from .token_cache import TokenParts, describe, token_cache

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    component = f"{stage}-lm"
    # 1. config, run folder, resume point, parts and their token caches -------------------------------
    out, ckpt, config = resume_point(out if out is not None else Path("runs") / component, resume, config,
                                     default_config("lm", CONFIGS / f"{component}.json", overrides))
    cfg = load_config(TokenLMTrainConfig, config, overrides)
    init = None
    if cfg.init:  # the LM, its config and the tokenizers come from the model folder
        init = load_init(cfg.init, f"{stage}_lm")
        cfg, grow = growth(init, cfg, str(config))
        cfg = ignore_fields(cfg, {"model": {}}, str(config))
        check_lora_options(init, cfg)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    kinds = STAGE_KINDS[stage]
    needs = {"cond": ("clap", "cond_rvq"), "semantic": ("clap", "kmeans"), "codes": ("codec",)}
    wanted = {p for k in kinds for p in needs[k]}
    if init is None:
        parts = TokenParts.load(**{p: getattr(cfg, p) for p in ("clap", "cond_rvq", "kmeans", "codec") if p in wanted})
        lm_config = _lm_config(stage, cfg, parts, str(config))
    else:
        pipe = init.pipe
        found = {"clap": pipe.conditioner.model, "cond_rvq": pipe.cond_rvq, "kmeans": pipe.kmeans, "codec": pipe.codec}
        parts = TokenParts(**{p: part for p, part in found.items() if p in wanted})
        lm_config = dataclasses.replace(init.model.config, **grow)
        if cfg.tempo_reader is not None:  # exported with the model: the pipeline reads the prompts' tempo with it
            from soundsmith.gen.tempo import TempoReader

            try:
                pipe.tempo_reader = TempoReader.from_pretrained(cfg.tempo_reader)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(f"{config}: field 'tempo_reader': {err}") from None
    root = Path(cfg.cache_dir) if cfg.cache_dir else out.parent / "token-cache"
    caches = {split: token_cache(data, split, parts, kinds, root=root, n_captions=cfg.n_captions, seed=cfg.seed,
                                 batch_size=cfg.cache_batch) for split in ("train", "valid") if split in _splits(data)}
    if "valid" not in caches:
        log.warning("%s has no valid split; validating on the train split", data)
        caches["valid"] = caches["train"]
    stop_at = cfg.max_steps if max_steps is None else max_steps

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    accelerator, is_main, device = start_accelerator(cfg)  # seeded: identical initial weights in every process
    run.open(accelerator)  # creates and locks OUT: after the parts and the token caches are checked
    if is_main:
        log.info("%s tokens: train %s, valid %s", component, describe(caches["train"]), describe(caches["valid"]))

    # 3. model, optimizer (decay on matrices only), LR schedule, EMA ---------------------------------
    model = build_lm(lm_config).train() if init is None else prepare_model(init, cfg, grow)
    if is_main:
        log.info("%s: %d parameters (%.2f MB in fp16), %d trained", component, model.num_parameters(),
                 model.num_parameters() * 2 / 1e6, sum(p.numel() for p in trainable(model)))
    decay = [p for p in trainable(model) if p.dim() >= 2]
    no_decay = [p for p in trainable(model) if p.dim() < 2]
    optimizer, scheduler = optimizer_with_schedule(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], cfg)
    ema = EMA(model, cfg.ema_decay, trainable_only=cfg.lora_rank is not None)
    wrapped, opt = accelerator.prepare(model, optimizer)
    ema.to(device)
    ema_model = copy.deepcopy(model).to(device).eval()  # EMA weights for validation and export
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 4. data: crops of the cached tokens in a resumable order; fixed validation crops ---------------
    tempi = {split: clip_tempi(data, split) if split in _splits(data) else None for split in ("train", "valid")}
    beats = {split: clip_beats(data, split) if split in _splits(data) else None for split in ("train", "valid")}
    crops = TokenCrops(stage, caches["train"], model, cond_dropout=cfg.cond_dropout, text_cond_prob=cfg.text_cond_prob,
                       short_crop_prob=cfg.short_crop_prob, where=f"{data} (train)", tempo=tempi["train"],
                       tempo_dropout=cfg.tempo_dropout, beats=beats["train"], beat_dropout=cfg.beat_dropout)
    valid = TokenCrops(stage, caches["valid"], model, where=f"{data} (valid)",
                       tempo=tempi["valid"] if tempi["valid"] is not None else tempi["train"],
                       beats=beats["valid"] if beats["valid"] is not None else beats["train"])
    valid_batches = _valid_batches(stage, valid, cfg.batch_size, cfg.num_valid_batches)

    # 5. resume: weights, optimizer, schedule, EMA, RNG states and the data position -----------------
    set_seed(cfg.seed, device_specific=True)  # each process its own dropout masks
    step, batches = restore(ckpt, objects, accelerator)
    sampler = ResumableSampler(len(crops), cfg.batch_size, seed=cfg.seed, num_replicas=accelerator.num_processes,
                               rank=accelerator.process_index, start=batches)
    batch_iter = iter(sampler)
    logger = MetricsLogger(out, enabled=is_main, resume_step=step if ckpt is not None else None)
    bar = progress_bar(stop_at, step, enabled=is_main, desc=component)

    # 6. the loop ------------------------------------------------------------------------------------
    running: dict[str, float] = {}
    clock = time.perf_counter()
    while step < stop_at:
        for i in range(cfg.grad_accum):
            # the crops and conditions of global batch n come from a generator seeded by (seed, n, rank)
            rng = np.random.default_rng([cfg.seed, batches, accelerator.process_index])
            batch = crops.batch([index for index, _ in next(batch_iter)], rng)
            batches += 1
            with no_sync(accelerator, wrapped, sync=i == cfg.grad_accum - 1), accelerator.autocast():
                output = wrapped(**{k: v.to(device) for k, v in batch.items()})
                loss = output.loss()
                accelerator.backward(loss / cfg.grad_accum)
            accumulate(running, "loss", loss.item() / cfg.grad_accum)
            accumulate(running, "accuracy", output.accuracy() / cfg.grad_accum)
            accumulate(running, "tokens", float((output.targets != -100).sum()))
        grad_norm = step_optimizer(wrapped, opt, scheduler, cfg.clip_grad_norm, accelerator)
        ema.update(model)
        step += 1
        bar.update(1)
        accumulate(running, "grad_norm", float(grad_norm))

        if due(step, cfg.log_every, stop_at):
            n = interval(step, cfg.log_every)
            wall = time.perf_counter() - clock
            # tokens is a count for the throughput, not a per-step mean
            means = train_means({k: v for k, v in sorted(running.items()) if k != "tokens"}, n, accelerator)
            logger.log(step, {**means, "train/lr": scheduler.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch, "time/s_per_step": wall / n,
                              "time/tokens_per_s": running.get("tokens", 0.0) / max(wall, 1e-9)})
            bar.set_postfix(loss=f"{means['train/loss']:.3f}", acc=f"{means['train/accuracy']:.3f}")
            running, clock = {}, time.perf_counter()

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # validation draws nothing from the global RNG: resuming stays bit-exact
                ema.copy_to(ema_model)
                logger.log(step, validate(ema_model, valid_batches, device))
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, component, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. export the EMA weights in fp16 (fine-tuned: a model folder; LoRA: the adapter folder) -------------
    export: Any = ema_model
    if is_main:
        ema.copy_to(ema_model)
        if init is not None:
            export = (ModelFolderExport(ema_model, init) if cfg.lora_rank is None else
                      AdapterExport(ema_model, init, extra={"steps": step, "data": str(Path(data).resolve())}))
    return finish(out, export, is_main=is_main, logger=logger, accelerator=accelerator)


# ------------------------------------------------------------------------------------------- helpers


def _lm_config(stage: str, cfg: TokenLMTrainConfig, parts: Any, where: str) -> Any:
    """The LM's TokenLMConfig: the config's `model` fields plus what the parts decide (vocabularies, rates,
    window in tokens, fingerprints)."""
    from soundsmith.gen.token_lm import TokenLMConfig

    known = {f.name for f in fields(TokenLMConfig)}
    unknown = sorted(set(cfg.model) - known)
    if unknown:
        raise ValueError(f"{where}: field 'model': unknown key {unknown[0]!r} (known: "
                         f"{', '.join(sorted(known - set(DERIVED)))})")
    derived: dict[str, Any] = {"stage": stage, "trained_with": parts.fingerprints()}
    if parts.cond_rvq is not None:
        derived.update(cond_levels=parts.cond_rvq.n_levels, cond_codebook_size=parts.cond_rvq.codebook_size)
    if parts.kmeans is not None:
        derived["semantic_vocab"] = parts.kmeans.n_clusters
    if parts.codec is not None:
        derived["acoustic_codebook_size"] = parts.codec.codebook_size
        levels = int(cfg.model.get("n_coarse", 3)) + (int(cfg.model.get("n_fine", 5)) if stage == "fine" else 0)
        if levels > parts.codec.max_levels:
            raise ValueError(f"{where}: field 'model': the {stage} LM needs {levels} codec levels, the codec has "
                             f"{parts.codec.max_levels}")
    if parts.codec is not None and parts.kmeans is not None:
        ratio = parts.codec.frame_rate / parts.kmeans.frame_rate
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ValueError(f"{where}: the codec's {parts.codec.frame_rate:g} frames/s are not a whole multiple of "
                             f"the k-means's {parts.kmeans.frame_rate:g} tokens/s")
        derived["frames_per_semantic"] = int(round(ratio))
    rate = parts.kmeans.frame_rate if stage == "semantic" else parts.codec.frame_rate
    r = derived.get("frames_per_semantic", 1) if stage == "coarse" else 1
    derived.update(frame_rate=float(rate), window=max(r, int(round(cfg.window_s * rate)) // r * r))
    for key, value in cfg.model.items():
        if key in DERIVED and key in derived and value != derived[key]:
            raise ValueError(f"{where}: field 'model': {key}={value!r} contradicts the parts ({derived[key]!r}); "
                             "leave it out")
    try:
        return TokenLMConfig(**{**cfg.model, **derived})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'model': {err}") from None


def _splits(data: str | os.PathLike) -> set[str]:
    """The splits a corpus has ("train" and "valid" stand for everything when it has no split labels)."""
    from .datasets import read_records

    _, records = read_records(data)
    found = {r.split for r in records}
    return {"train", "valid"} if found == {None} else found - {None}


def _valid_batches(stage: str, valid: TokenCrops, batch_size: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Fixed validation crops (first crop of each clip, first clips in order), per condition kind."""
    positions = list(range(len(valid)))[: batch_size * count]
    modes = ("audio", "text", "null") if stage in ("semantic", "coarse") else ("none",)
    out = []
    for mode in modes:
        for i in range(0, len(positions), batch_size):
            rng = np.random.default_rng(0)  # unused by fixed crops; keeps the signature
            out.append((mode, valid.batch(positions[i:i + batch_size], rng, cond="audio" if mode == "none" else mode)))
    return out


@torch.no_grad()
def validate(model: Any, batches: list[tuple[str, dict[str, Any]]], device: torch.device) -> dict[str, float]:
    """Mean loss and accuracy per condition kind: valid/loss (audio conditions, or none for the fine LM),
    valid/loss_text, valid/loss_null, and the same for accuracy; for the acoustic stages also the loss of each
    codec level under audio conditions, valid/loss_l1, valid/loss_l2, ...; for a semantic LM with a tempo input
    also valid/loss_no_tempo (the audio-conditioned crops without their tempo), for an LM with a beat input
    valid/loss_no_beat."""
    sums: dict[str, list[float]] = {}
    levels: list[list[float]] = []
    for mode, batch in batches:
        output = model(**{k: v.to(device) for k, v in batch.items()})
        suffix = "" if mode in ("audio", "none") else f"_{mode}"
        entry = sums.setdefault(suffix, [0.0, 0.0, 0.0])
        entry[0] += output.loss().item()
        entry[1] += output.accuracy()
        entry[2] += 1
        if not suffix:
            levels.append(output.level_losses())
        for key in ("tempo", "beat"):  # what a tempo or beat input is worth: the same crops without it
            if key in batch and not suffix:
                plain = model(**{k: v.to(device) for k, v in batch.items() if k != key})
                entry = sums.setdefault(f"_no_{key}", [0.0, 0.0, 0.0])
                entry[0] += plain.loss().item()
                entry[1] += plain.accuracy()
                entry[2] += 1
    metrics = {}
    for suffix, (loss, acc, n) in sums.items():
        metrics[f"valid/loss{suffix}"] = loss / n
        metrics[f"valid/accuracy{suffix}"] = acc / n
    for j, per_batch in enumerate(zip(*levels)):
        metrics[f"valid/loss_l{j + 1}"] = sum(per_batch) / len(per_batch)
    return metrics


def stage_trainer(stage: str) -> Callable[..., Path]:
    """`train` bound to one stage: the function `soundsmith train <stage>-lm` calls."""
    return functools.partial(train, stage)
