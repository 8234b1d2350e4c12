"""Train the mel VAE (AudioLDM's first stage): log-mel of random crops -> MelVAE, L1 + beta * KL.

    soundsmith train vae --data data/corpus --out runs/vae [--config my.json] [--resume] [--max-steps N]
    accelerate launch --multi_gpu --num_processes 2 -m soundsmith.cli train vae ...  # 2 processes (GPUs, or gloo on CPU)

The loop reads top to bottom (nanoGPT's train.py): config, accelerator, data, model + optimizer +
schedule + EMA, resume, then per step: accumulate, clip, step, EMA, log, and every N steps validate,
write samples and checkpoint. At the end the latent `scaling_factor` (1 / std of the latents on
training data, as AudioLDM measures it) is stored and the EMA weights are exported in fp16 to
`OUT/export/` (`MelVAE.save_pretrained`).

Run folder: config.json, metrics.jsonl, tensorboard/, samples/step-XXXXXXXXX/, checkpoints/, export/.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.core.run_lock import releases_folder_locks

from .checkpoint import EpochIndexed, ResumableSampler
from .config import CONFIGS, bounded
from .ema import EMA
from .loop import (
    RunConfig,
    due,
    finish,
    interval,
    model_config,
    no_sync,
    open_run,
    optimizer_with_schedule,
    resume_clips,
    save_run_checkpoint,
    start_accelerator,
    start_clock,
    step_optimizer,
    step_times,
    train_means,
    validation_batch,
)
from .losses import kl_loss
from .metrics_log import MetricsLogger, save_samples

log = logging.getLogger(__name__)

COMPONENT = "vae"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class VAETrainConfig(RunConfig, warmup_steps=100):
    """Everything a VAE run needs besides the data and run folders: `RunConfig`'s fields (a batch of
    clips; `model`: MelVAEConfig fields), then the VAE's own."""

    grad_accum: int = bounded(1, 1)  # micro-steps per optimizer step
    crop_seconds: float = bounded(1.04, 0.0, 60.0, low_open=True)  # 104 mel frames: a multiple of 4 (0.04 s)
    kl_weight: float = bounded(1e-6, 0.0)  # relative to the L1 summed over an example's mel, as in LDM/AudioLDM
    ema_decay: float = bounded(0.999, 0.0, 0.999999)
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_workers: int = bounded(1, 0, 64)  # DataLoader worker processes
    num_valid_clips: int = bounded(16, 1)  # validation clips (center crops of the valid split)
    valid_seconds: float = bounded(2.56, 0.0, 60.0, low_open=True)
    num_samples: int = bounded(3, 0)  # validation clips written as PNG (+ WAV) at each evaluation
    vocoder: str | None = None  # a trained vocoder folder for the sample WAVs; None: a Griffin-Lim preview
    scale_batches: int = bounded(32, 1)  # training batches for measuring scaling_factor at the end


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/vae", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) a mel VAE; return the export folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/vae.json`.
    """
    from soundsmith.codecs.mel import MelSpectrogram
    from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig

    from .datasets import AudioCaptionDataset

    # 1. config, run folder, resume point -----------------------------------------------------------
    out, ckpt, config, cfg, run, stop_at = open_run(
        VAETrainConfig, config, DEFAULT_CONFIG, data=data, out=out, resume=resume, max_steps=max_steps,
        overrides=overrides, force_change=force_change)
    vae_cfg = model_config(MelVAEConfig, cfg.model, config)

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    accelerator, is_main, device = start_accelerator(cfg)  # seeded: identical initial weights in every process

    # 3. data: random crops of the train split in a resumable order; fixed validation crops ---------
    sr = vae_cfg.mel.sample_rate
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=cfg.crop_seconds, random_crop=True,
                                    seed=cfg.seed, split="train")
    valid = validation_batch(data, sr, cfg.valid_seconds, cfg.num_valid_clips)[:, 0]  # [N, T] mono

    # 4. model, optimizer, LR schedule, EMA ----------------------------------------------------------
    vae = MelVAE(vae_cfg).train()
    to_mel = MelSpectrogram(vae_cfg.mel).to(device)
    frames = to_mel.num_frames(round(cfg.crop_seconds * sr))
    if frames % vae_cfg.downsample_factor:
        raise ValueError(f"{config}: field 'crop_seconds' gives {frames} mel frames, not a multiple of "
                         f"{vae_cfg.downsample_factor}; use a multiple of "
                         f"{vae_cfg.downsample_factor * vae_cfg.mel.hop_length / sr:g} s")
    optimizer, scheduler = optimizer_with_schedule(vae.parameters(), cfg)
    ema = EMA(vae, cfg.ema_decay)
    model, opt = accelerator.prepare(vae, optimizer)  # DDP + mixed precision; the scheduler we step ourselves
    ema.to(device)
    objects = {"model": vae, "optimizer": optimizer, "scheduler": scheduler, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 5. resume: weights, optimizer, schedule, EMA, RNG states and the data position -----------------
    # each process reseeded (its own posterior noise); OUT created and locked: after the data and models are checked
    step, batches, sampler, batch_iter, logger, bar = resume_clips(ckpt, objects, accelerator, train_set, cfg, run,
                                                                   stop_at, desc="vae")
    ema_model = copy.deepcopy(vae).eval()  # holds the EMA weights for validation and export
    vocoder = _load_vocoder(cfg.vocoder, device) if is_main and cfg.vocoder else None

    # 6. the loop ------------------------------------------------------------------------------------
    running = {"loss": 0.0, "l1": 0.0, "kl": 0.0}
    clock = start_clock()  # wall and CPU time of the logging interval
    while step < stop_at:
        for micro in range(cfg.grad_accum):
            batch = next(batch_iter)
            batches += 1
            wave = batch["wave"][:, 0].to(device)  # [B, T] mono
            with no_sync(accelerator, model, sync=micro == cfg.grad_accum - 1), accelerator.autocast():
                mel = to_mel(wave)  # [B, F, S]
                recon, posterior = model(mel, sample_posterior=True)
                l1 = F.l1_loss(recon.float(), mel)
                kl = kl_loss(posterior) / mel[0].numel()  # per mel element, so kl_weight matches LDM's
                loss = l1 + cfg.kl_weight * kl
                accelerator.backward(loss / cfg.grad_accum)
            running["loss"] += loss.item() / cfg.grad_accum
            running["l1"] += l1.item() / cfg.grad_accum
            running["kl"] += kl.item() / cfg.grad_accum
        grad_norm = step_optimizer(model, opt, scheduler, cfg.clip_grad_norm, accelerator)
        ema.update(vae)
        step += 1
        bar.update(1)

        if due(step, cfg.log_every, stop_at):
            n = interval(step, cfg.log_every)
            means = train_means(running, n, accelerator)
            logger.log(step, {**means, "train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch, **step_times(clock, n)})
            bar.set_postfix(loss=f"{means['train/loss']:.4f}", l1=f"{means['train/l1']:.4f}")
            running, clock = dict.fromkeys(running, 0.0), start_clock()

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # validation never draws from the global RNG, so resuming stays bit-exact
                ema.copy_to(ema_model)
                metrics = _validate(ema_model, to_mel, valid, device)
                logger.log(step, metrics)
                _write_samples(out / "samples" / f"step-{step:09d}", ema_model, to_mel, valid, cfg.num_samples,
                               vocoder, device, logger, step)
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. scaling factor on training data, then export the EMA weights in fp16 ------------------------
    if is_main:
        ema.copy_to(ema_model)
        scale = measure_scaling_factor(ema_model, to_mel, train_set, cfg, device)
        ema_model.config = dataclasses.replace(ema_model.config, scaling_factor=scale)
        logger.log(step, {"scaling_factor": scale})
        log.info("latent scaling_factor %.4f", scale)
    return finish(out, ema_model, is_main=is_main, logger=logger, accelerator=accelerator)


# ------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def measure_scaling_factor(vae: Any, to_mel: Any, train_set: Any, cfg: VAETrainConfig, device: torch.device) -> float:
    """1 / std of posterior samples over `cfg.scale_batches` batches of training crops (AudioLDM's
    `scale_by_std`); its own seeded sampler and generator leave the training RNG alone."""
    from .datasets import collate

    sampler = ResumableSampler(len(train_set), cfg.batch_size, seed=cfg.seed + 1)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    total, total_sq, count = 0.0, 0.0, 0
    for i, idx in enumerate(sampler):
        if i == cfg.scale_batches:
            break
        wave = collate([EpochIndexed(train_set)[k] for k in idx])["wave"][:, 0].to(device)  # [B, T]
        z = vae.encode(to_mel(wave)).sample(generator=g).double()  # [B, C, S/4, F/4]
        total, total_sq, count = total + z.sum().item(), total_sq + (z * z).sum().item(), count + z.numel()
    std = math.sqrt(max(total_sq / count - (total / count) ** 2, 1e-12))
    return 1.0 / std


@torch.no_grad()
def _validate(vae: Any, to_mel: Any, valid: torch.Tensor, device: torch.device) -> dict[str, float]:
    l1, kl, n = 0.0, 0.0, 0
    for chunk in valid.split(8):
        mel = to_mel(chunk.to(device))  # [b, F, S]
        mel = mel[..., : mel.shape[-1] // vae.config.downsample_factor * vae.config.downsample_factor]
        posterior = vae.encode(mel)
        recon = vae.decode(posterior.mean)  # deterministic: the posterior mean
        l1 += F.l1_loss(recon, mel, reduction="sum").item() / mel[0].numel()
        kl += posterior.kl().sum().item() / mel[0].numel()
        n += mel.shape[0]
    return {"valid/l1": l1 / n, "valid/kl": kl / n}


@torch.no_grad()
def _write_samples(folder: Path, vae: Any, to_mel: Any, valid: torch.Tensor, num: int, vocoder: Any,
                   device: torch.device, logger: MetricsLogger, step: int) -> None:
    cfg = vae.config.mel
    for i in range(min(num, valid.shape[0])):
        mel = to_mel(valid[i: i + 1].to(device))
        mel = mel[..., : mel.shape[-1] // vae.config.downsample_factor * vae.config.downsample_factor]
        recon = vae.decode(vae.encode(mel).mean)  # [1, F, S]
        wave = vocoder(recon)[0] if vocoder is not None else _griffin_lim(recon[0], to_mel)
        name = f"clip{i}" + ("" if vocoder is not None else "-griffinlim")
        save_samples(folder, name, cfg.sample_rate, wave=wave,
                     mels={"target": mel[0], "reconstruction": recon[0]}, hop_length=cfg.hop_length)
        logger.log_audio(step, f"samples/{name}", wave, cfg.sample_rate)


def _griffin_lim(log_mel: torch.Tensor, to_mel: Any, n_iter: int = 32) -> torch.Tensor:
    """A rough listening preview of a log-mel `[F, S]` when no vocoder is given: Griffin-Lim phase
    retrieval on the pseudo-inverse of the mel filterbank (librosa has it but is not a dependency,
    and torchaudio does not load here). Seeded, so it never draws from the global RNG."""
    cfg = to_mel.cfg
    fb = to_mel.filterbank.float().cpu()  # [F, n_freqs]
    mag = (torch.linalg.pinv(fb) @ torch.exp(log_mel.float().cpu())).clamp(min=0.0)  # [n_freqs, S]
    window = torch.hann_window(cfg.win_length)
    stft = {"n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "win_length": cfg.win_length, "window": window}
    phase = torch.rand(mag.shape, generator=torch.Generator().manual_seed(0)) * 2 * math.pi
    spec = torch.polar(mag, phase)
    for _ in range(n_iter):
        rebuilt = torch.stft(torch.istft(spec, **stft), **stft, return_complex=True)  # [n_freqs, S]
        spec = torch.polar(mag, rebuilt.angle())
    wave = torch.istft(spec, **stft)
    return wave / wave.abs().max().clamp(min=1e-3) * 0.5  # preview level; the mel's scale is approximate


def _load_vocoder(path: str, device: torch.device) -> Any:
    from soundsmith.codecs.vocoder import Vocoder

    return Vocoder.from_pretrained(path).to(device).eval()

