"""Train our CLAP (gen/clap.py): the audio tower and both projections against the frozen MiniLM.

    soundsmith train clap --data data/corpus --out runs/clap [--config my.json] [--resume] [--max-steps N]

Symmetric InfoNCE with a learned temperature over in-batch negatives (CLIP / LAION CLAP), label-aware:
two clips with the same label set (`eval.clap_metrics.label_key`) are not negatives of each other, so
their off-diagonal logits are masked out of both softmaxes. Captions are drawn afresh from the labels
for every item and epoch (`captions.caption(labels, rng, style="train")`, seeded by seed, epoch, index)
and run through the frozen MiniLM under no_grad, uncached: only ~11% of them repeat (gen/text_encoder.py). Audio: random crops of the
train split, plus SpecAugment-style time and frequency masks on the log-mel.

The loop reads top to bottom like the VAE's: config, accelerator, data, model + optimizer + schedule
+ EMA, resume, then per step: forward, loss, clip, step, EMA, log, and every N steps validate (R@k and
zero-shot accuracy of the EMA model on the valid split) and checkpoint. The EMA weights are exported in
fp16 to `OUT/export/` (`SoundsmithClap.save_pretrained`). Negatives are per process: with several
processes each sees its own batch (no all-gather), which is what a CPU run has anyway.

Run folder: config.json, metrics.jsonl, tensorboard/, checkpoints/, export/.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.core.run_lock import releases_folder_locks
from torch import Tensor

from .config import CONFIGS, bounded
from .ema import EMA
from .loop import (
    RunConfig,
    due,
    finish,
    interval,
    open_run,
    optimizer_with_schedule,
    resume_clips,
    save_run_checkpoint,
    start_accelerator,
    step_optimizer,
    train_means,
    validation_split,
)

log = logging.getLogger(__name__)

COMPONENT = "clap"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class ClapTrainConfig(RunConfig, max_steps=700, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=40,
                      min_lr_ratio=0.05, clip_grad_norm=5.0, eval_every=175, save_every=175):
    """Everything a CLAP run needs besides the data and run folders: `RunConfig`'s fields (`model`:
    ClapConfig fields), then CLAP's own."""

    batch_size: int = bounded(64, 2)  # clips per step: also the number of in-batch negatives + 1
    crop_seconds: float = bounded(2.5, 0.0, 60.0, low_open=True)  # random crop of each training clip
    # AdamW moves the log-scale by ~lr per step: at CLIP's 1x it barely leaves 1/0.07 in a short CPU run
    temperature_lr_scale: float = bounded(10.0, 0.0)
    label_aware: bool = True  # mask same-label-set pairs out of the negatives
    caption_style: str = bounded("train", choices=("train", "all"))  # "heldout" stays unseen for the paraphrase test
    time_masks: int = bounded(2, 0)  # SpecAugment: this many time masks ...
    time_mask_frames: int = bounded(20, 0)  # ... each up to this many mel frames (10 ms each)
    freq_masks: int = bounded(2, 0)
    freq_mask_bins: int = bounded(8, 0)
    ema_decay: float = bounded(0.995, 0.0, 0.999999)
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_workers: int = bounded(1, 0, 64)  # DataLoader worker processes (reading + cropping overlaps compute)
    num_valid_clips: int = bounded(192, 2)  # valid-split clips (whole) for R@k and zero-shot accuracy


def clap_loss(audio: Tensor, text: Tensor, scale: Tensor, same: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: audio `[B, D]`, text `[B, D]` (L2-normalised, row i belongs to clip i), scale
    = exp(learned logit scale). `same` `[B, B]` bool marks pairs with the same label set: their
    off-diagonal logits are masked out of both softmaxes (they are neither positives nor negatives)."""
    logits = scale * audio @ text.T  # [B, B] audio -> text
    if same is not None:
        off_diagonal = same & ~torch.eye(len(same), dtype=torch.bool, device=same.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def spec_augment(mel: Tensor, *, time_masks: int, time_width: int, freq_masks: int, freq_width: int) -> Tensor:
    """Zero random time and frequency stripes of a log-mel `[B, F, S]` (SpecAugment, no warping), filled
    with each clip's mean so the masks carry no energy cue. Draws from torch's global RNG (checkpointed)."""
    b, f, s = mel.shape
    keep = torch.ones(b, f, s, dtype=torch.bool, device=mel.device)
    for count, width, size, axis in ((time_masks, time_width, s, 2), (freq_masks, freq_width, f, 1)):
        for _ in range(count):
            w = torch.randint(0, width + 1, (b,))
            start = (torch.rand(b) * (size - w).clamp(min=0)).long()
            for i in range(b):
                if axis == 2:
                    keep[i, :, start[i]:start[i] + w[i]] = False
                else:
                    keep[i, start[i]:start[i] + w[i], :] = False
    fill = mel.mean(dim=(1, 2), keepdim=True)
    return torch.where(keep, mel, fill)


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/clap", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, text_encoder: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) our CLAP; return the export folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/clap.json`, and
    `data` needs structured labels. `text_encoder`: an already loaded `SentenceEncoder` to use (default:
    load the config's).
    """
    from soundsmith.eval.clap_metrics import label_key
    from soundsmith.gen.clap import ClapConfig, SoundsmithClap

    from .datasets import AudioCaptionDataset

    # 1. config, run folder, resume point -----------------------------------------------------------
    out, ckpt, config, cfg, run, stop_at = open_run(
        ClapTrainConfig, config, DEFAULT_CONFIG, data=data, out=out, resume=resume, max_steps=max_steps,
        overrides=overrides, force_change=force_change)
    try:
        clap_cfg = ClapConfig.from_dict(cfg.model, f"{config}: field 'model'")
    except TypeError as err:
        raise ValueError(f"{config}: field 'model': {err}") from None

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    accelerator, is_main, device = start_accelerator(cfg)  # seeded: identical initial weights in every process

    # 3. data: random crops + captions redrawn from the labels, resumable order; whole valid clips ----
    sr = clap_cfg.sample_rate
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=cfg.crop_seconds, random_crop=True,
                                    seed=cfg.seed, split="train", redraw_captions=True,
                                    caption_style=cfg.caption_style)
    valid = _validation_set(data, sr, cfg.num_valid_clips)

    # 4. model (the frozen MiniLM lives outside its parameters), optimizer, LR schedule, EMA ----------
    clap = SoundsmithClap(clap_cfg, text_encoder=text_encoder).train()
    if is_main:
        log.info("CLAP: %d trained parameters (%.2f MB in fp16)", clap.num_trained_parameters(),
                 clap.num_trained_parameters() * 2 / 1e6)
    # no weight decay on norms and biases (CLIP's recipe); the temperature gets its own, faster LR
    decay = [p for n, p in clap.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in clap.named_parameters() if p.ndim < 2 and n != "logit_scale"]
    optimizer, scheduler = optimizer_with_schedule(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0},
         {"params": [clap.logit_scale], "weight_decay": 0.0, "lr": cfg.lr * cfg.temperature_lr_scale}], cfg)
    ema = EMA(clap, cfg.ema_decay)
    model, opt = accelerator.prepare(clap, optimizer)  # the scheduler we step ourselves
    ema.to(device)
    # EMA weights for validation and export; built before the RNG states are restored (its init draws)
    ema_model = SoundsmithClap(clap_cfg, text_encoder=clap.text_encoder).to(device).eval()  # shares the MiniLM
    objects = {"model": clap, "optimizer": optimizer, "scheduler": scheduler, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 5. resume: weights, optimizer, schedule, EMA, RNG states and the data position -----------------
    # each process reseeded (its own SpecAugment masks); OUT created and locked: after the data and models are checked
    step, batches, sampler, batch_iter, logger, bar = resume_clips(ckpt, objects, accelerator, train_set, cfg, run,
                                                                   stop_at, desc="clap")

    def augment(mel: Tensor) -> Tensor:
        return spec_augment(mel, time_masks=cfg.time_masks, time_width=cfg.time_mask_frames,
                            freq_masks=cfg.freq_masks, freq_width=cfg.freq_mask_bins)

    # 6. the loop ------------------------------------------------------------------------------------
    running = {"loss": 0.0, "masked_pairs": 0.0, "step_seconds": 0.0}
    while step < stop_at:
        t0 = time.perf_counter()
        batch = next(batch_iter)
        batches += 1
        wave = batch["wave"][:, 0].to(device)  # [B, T] mono crops
        text_features = clap.text_features(batch["caption"], cache=False)  # [B, 384], frozen, no grad
        keys = [label_key(lab) for lab in batch["labels"]]
        same = torch.tensor([[a == b for b in keys] for a in keys], device=device) if cfg.label_aware else None
        with accelerator.autocast():
            audio_emb, text_emb, scale = model(wave, text_features, augment=augment)
            loss = clap_loss(audio_emb.float(), text_emb.float(), scale.float(), same)
        accelerator.backward(loss)
        grad_norm = step_optimizer(model, opt, scheduler, cfg.clip_grad_norm, accelerator)
        ema.update(clap)
        step += 1
        bar.update(1)
        running["loss"] += loss.item()
        running["masked_pairs"] += 0.0 if same is None else float(same.sum() - len(same)) / len(same)
        running["step_seconds"] += time.perf_counter() - t0

        if due(step, cfg.log_every, stop_at):
            means = train_means(running, interval(step, cfg.log_every), accelerator)
            logger.log(step, {**means, "train/grad_norm": float(grad_norm), "train/temperature": 1.0 / scale.item(),
                              "train/lr": scheduler.get_last_lr()[0], "train/epoch": batches / sampler.batches_per_epoch})
            bar.set_postfix(loss=f"{means['train/loss']:.3f}", s_per_step=f"{means['train/step_seconds']:.2f}")
            running = dict.fromkeys(running, 0.0)

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # validation draws only from its own seeded generators: resuming stays bit-exact
                ema_weights(ema, clap, ema_model)
                logger.log(step, validate(ema_model, valid))
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. export the EMA weights in fp16 ---------------------------------------------------------------
    if is_main:
        ema_weights(ema, clap, ema_model)
    return finish(out, ema_model, is_main=is_main, logger=logger, accelerator=accelerator)


# ------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def ema_weights(ema: EMA, live: Any, target: Any) -> Any:
    """`target` <- EMA parameters + the live model's buffers (BatchNorm statistics, which EMA does not
    average; timm's ModelEma copies them the same way)."""
    ema.copy_to(target)
    buffers = dict(live.named_buffers())
    for name, buf in target.named_buffers():
        buf.copy_(buffers[name])
    return target


def _validation_set(data: str | os.PathLike, sr: int, num: int) -> dict[str, Any]:
    """Up to `num` whole clips of the valid split (evenly spread over it), kept in memory."""
    from .datasets import collate

    valid_set = validation_split(data, sample_rate=sr, crop_seconds=None, random_crop=False)
    count = min(num, len(valid_set))
    picks = sorted({round(i * (len(valid_set) - 1) / max(count - 1, 1)) for i in range(count)})
    batch = collate([valid_set[i] for i in picks])
    return {"wave": batch["wave"], "length": batch["length"], "labels": batch["labels"]}


@torch.no_grad()
def validate(clap: Any, valid: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """text->audio R@1/R@10/mAP (in-template captions, seeded) and canonical zero-shot accuracy per family."""
    import numpy as np
    from soundsmith.core.captions import caption
    from soundsmith.eval.clap_metrics import (
        FAMILIES,
        candidates,
        canonical_prompt,
        family_of,
        label_key,
        relevance,
        retrieval_metrics,
        zero_shot_accuracy,
    )

    labels = valid["labels"]
    audio = torch.cat([clap.embed_audio(valid["wave"][i:i + 1, :, :n], clap.sample_rate)
                       for i, n in enumerate(valid["length"].tolist())])  # [N, D], unpadded clips
    texts = [caption(lab, np.random.default_rng([seed, i]), style="train") for i, lab in enumerate(labels)]
    keys = [label_key(lab) for lab in labels]
    t2a = retrieval_metrics(clap.embed_text(texts), audio, relevance(keys, keys))
    out = {"valid/t2a_R@1": t2a["R@1"], "valid/t2a_R@10": t2a["R@10"], "valid/t2a_mAP": t2a["mAP"]}
    for family in FAMILIES:
        members = [(i, fam[family]) for i, lab in enumerate(labels) if family in (fam := family_of(lab))]
        if members:
            classes = candidates(family, [v for _, vals in members for v in vals])
            prompts = clap.embed_text([canonical_prompt(family, c) for c in classes])
            truth = [[classes.index(v) for v in vals] for _, vals in members]
            out[f"valid/zero_shot_{family}"] = zero_shot_accuracy(audio[[i for i, _ in members]], prompts, truth)
    return out
