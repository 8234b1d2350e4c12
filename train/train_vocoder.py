"""Train the HiFi-GAN vocoder (log-mel -> wave) with the HiFi-GAN recipe.

    soundsmith train vocoder --data data/corpus --out runs/vocoder [--config my.json] [--resume] [--max-steps N]
    accelerate launch --multi_gpu --num_processes 2 -m soundsmith.cli train vocoder ...

Generator: `soundsmith.codecs.vocoder.Vocoder` (transformers `SpeechT5HifiGan`) with weight norm while
training. Discriminators: multi-period (MPD) + multi-scale (MSD), one module and one optimizer.
Per step, as in jik876/hifi-gan `train.py`:
    1. y_hat = G(mel(y))
    2. discriminator: LSGAN on D(y) vs D(y_hat) (no gradient into G); clip; step
    3. generator: 45 * mel L1 + 2 * feature matching + LSGAN adversarial (+ multi-res STFT), with
       the just-updated D; clip; step; EMA
Before `disc_start_step` only the generator trains, on the reconstruction losses: on a 2-core CPU a
GAN step costs ~4x a generator step, and the adversarial terms help most once the mel is right.
then log, and every N steps validate (EMA generator), write WAV + mel PNG samples, checkpoint.
At the end the EMA generator is exported in fp16 to `OUT/export/` (weight norm folded).

Run folder: config.json, metrics.jsonl, tensorboard/, samples/step-XXXXXXXXX/, checkpoints/, export/.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from soundsmith.core.run_lock import releases_folder_locks

from .config import CONFIGS, bounded
from .discriminators import HifiGanDiscriminator
from .ema import EMA
from .loop import (
    RunConfig,
    accumulate,
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
from .losses import (
    MultiResolutionSTFTLoss,
    feature_matching_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_l1,
)
from .metrics_log import MetricsLogger, save_samples

log = logging.getLogger(__name__)

COMPONENT = "vocoder"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class VocoderTrainConfig(RunConfig, lr=2e-4, betas=(0.8, 0.99), clip_grad_norm=100.0):  # HiFi-GAN's lr, betas
    """Everything a vocoder run needs besides the data and run folders: `RunConfig`'s fields (a batch of
    clips; lr and betas for G and D; `model`: VocoderConfig fields), then the vocoder's own."""

    grad_accum: int = bounded(1, 1)  # micro-steps per optimizer step
    crop_seconds: float = bounded(0.5, 0.0, 60.0, low_open=True)  # HiFi-GAN: 8192 samples at 22 kHz = 0.37 s
    mel_weight: float = bounded(45.0, 0.0)  # HiFi-GAN
    fm_weight: float = bounded(2.0, 0.0)  # HiFi-GAN
    adv_weight: float = bounded(1.0, 0.0)
    stft_weight: float = bounded(1.0, 0.0)  # multi-resolution STFT loss (Parallel WaveGAN); 0 = HiFi-GAN's own
    disc_start_step: int = bounded(800, 0)  # train G on the reconstruction losses alone before this step
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (16, 32, 64, 128, 128)  # HiFi-GAN V1: (32, 128, 512, 1024, 1024)
    msd_scales: int = bounded(3, 0, 8)
    msd_channels: tuple[int, ...] = (16, 16, 32, 64, 128, 128, 128)  # V1: (128, 128, 256, 512, 1024, 1024, 1024)
    ema_decay: float = bounded(0.999, 0.0, 0.999999)
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_workers: int = bounded(1, 0, 64)
    num_valid_clips: int = bounded(16, 1)
    valid_seconds: float = bounded(2.0, 0.0, 60.0, low_open=True)
    num_samples: int = bounded(3, 0)  # validation clips written as WAV + PNG at each evaluation

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mpd_periods and not self.msd_scales:
            raise ValueError("fields 'mpd_periods' and 'msd_scales' leave no discriminator")
        if any(p < 1 for p in self.mpd_periods) or any(c < 1 for c in (*self.mpd_channels, *self.msd_channels)):
            raise ValueError("fields 'mpd_periods', 'mpd_channels', 'msd_channels' must hold positive integers")
        if len(self.msd_channels) != 7:
            raise ValueError(f"field 'msd_channels' takes 7 widths (HiFi-GAN's DiscriminatorS), got "
                             f"{len(self.msd_channels)}")


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/vocoder", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) a HiFi-GAN vocoder; return the export folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/vocoder.json`.
    """
    from soundsmith.codecs.mel import MelSpectrogram
    from soundsmith.codecs.vocoder import Vocoder, VocoderConfig

    from .datasets import AudioCaptionDataset

    # 1. config, run folder, resume point -----------------------------------------------------------
    out, ckpt, config, cfg, run, stop_at = open_run(
        VocoderTrainConfig, config, DEFAULT_CONFIG, data=data, out=out, resume=resume, max_steps=max_steps,
        overrides=overrides, force_change=force_change)
    voc_cfg = model_config(VocoderConfig, cfg.model, config)

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    accelerator, is_main, device = start_accelerator(cfg)  # seeded: identical initial weights in every process

    # 3. data: random crops of the train split in a resumable order; fixed validation crops ---------
    sr, hop = voc_cfg.sampling_rate, voc_cfg.hop_length
    if round(cfg.crop_seconds * sr) % hop:
        raise ValueError(f"{config}: field 'crop_seconds' must be a whole number of mel frames "
                         f"({hop / sr:g} s each), got {cfg.crop_seconds}")
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=cfg.crop_seconds, random_crop=True,
                                    seed=cfg.seed, split="train")
    valid = validation_batch(data, sr, cfg.valid_seconds, cfg.num_valid_clips)[:, 0]  # [N, T] mono

    # 4. models, optimizers, LR schedules, EMA -------------------------------------------------------
    vocoder = Vocoder(voc_cfg)
    vocoder.apply_weight_norm()  # HiFi-GAN trains with weight norm; export folds it
    vocoder.train()
    disc = HifiGanDiscriminator(cfg.mpd_periods, cfg.mpd_channels, cfg.msd_scales, cfg.msd_channels).train()
    to_mel = MelSpectrogram(voc_cfg.mel).to(device)
    stft_loss = MultiResolutionSTFTLoss().to(device)
    opt_g, sched_g = optimizer_with_schedule(vocoder.parameters(), cfg)
    # D's schedule starts with D
    opt_d, sched_d = optimizer_with_schedule(disc.parameters(), cfg,
                                             total_steps=max(1, cfg.max_steps - cfg.disc_start_step))
    ema = EMA(vocoder, cfg.ema_decay)
    gen, dis, opt_g_acc, opt_d_acc = accelerator.prepare(vocoder, disc, opt_g, opt_d)
    ema.to(device)
    objects = {"generator": vocoder, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d,
               "sched_g": sched_g, "sched_d": sched_d, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 5. resume: weights, optimizers, schedules, EMA, RNG states and the data position ---------------
    # each process reseeded (its own draws); OUT created and locked: after the data and models are checked
    step, batches, sampler, batch_iter, logger, bar = resume_clips(ckpt, objects, accelerator, train_set, cfg, run,
                                                                   stop_at, desc="vocoder")
    ema_model = copy.deepcopy(vocoder).eval()  # holds the EMA weights for validation and export

    # 6. the loop ------------------------------------------------------------------------------------
    running: dict[str, float] = {}
    clock = start_clock()  # wall and CPU time of the logging interval
    while step < stop_at:
        use_gan = step >= cfg.disc_start_step
        n_micro = cfg.grad_accum
        # 6a. the micro-batches of this step: waves and their mels
        micro = []
        for _ in range(n_micro):
            batch = next(batch_iter)
            batches += 1
            y = batch["wave"][:, 0].to(device)  # [B, T] mono, T = S * hop
            micro.append((y, to_mel(y)))  # mel [B, F, S]

        # 6b. discriminator step: real vs fake, the fakes from a gradient-free generator pass (the
        # generator runs again in 6c, right before its backward, as DDP's gradient sync requires)
        stats: dict[str, float] = {}
        if use_gan:
            for i, (y, mel) in enumerate(micro):
                with torch.no_grad(), accelerator.autocast():
                    y_hat = vocoder(mel)  # [B, T]
                with no_sync(accelerator, dis, sync=i == n_micro - 1), accelerator.autocast():
                    real, fake = dis(torch.cat([y, y_hat])).split([len(y), len(y)])
                    loss_d = lsgan_discriminator_loss(real.logits, fake.logits)
                    accelerator.backward(loss_d / n_micro)
                accumulate(stats, "loss_d", loss_d.item() / n_micro)
            stats["grad_norm_d"] = float(step_optimizer(dis, opt_d_acc, sched_d, cfg.clip_grad_norm, accelerator))

        # 6c. generator step: reconstruction + feature matching + adversarial, against the updated D.
        # D is frozen and called unwrapped: the generator needs only its input gradients, so D's weight
        # gradients (a third of its backward) and their all-reduce would be wasted work.
        disc.requires_grad_(False)
        for i, (y, mel) in enumerate(micro):
            with no_sync(accelerator, gen, sync=i == n_micro - 1), accelerator.autocast():
                y_hat = gen(mel)  # [B, T]
                mel_hat = to_mel(y_hat.float())
                loss_mel = mel_l1(mel_hat, mel)
                loss_g = cfg.mel_weight * loss_mel
                if cfg.stft_weight > 0:
                    loss_stft = stft_loss(y_hat.float(), y)
                    loss_g = loss_g + cfg.stft_weight * loss_stft
                    accumulate(stats, "loss_stft", loss_stft.item() / n_micro)
                if use_gan:
                    real, fake = disc(torch.cat([y, y_hat])).split([len(y), len(y)])
                    loss_adv = lsgan_generator_loss(fake.logits)
                    loss_fm = feature_matching_loss(real.features, fake.features)
                    loss_g = loss_g + cfg.adv_weight * loss_adv + cfg.fm_weight * loss_fm
                    accumulate(stats, "loss_adv", loss_adv.item() / n_micro)
                    accumulate(stats, "loss_fm", loss_fm.item() / n_micro)
                accelerator.backward(loss_g / n_micro)
            accumulate(stats, "loss_g", loss_g.item() / n_micro)
            accumulate(stats, "mel_l1", loss_mel.item() / n_micro)
        disc.requires_grad_(True)
        stats["grad_norm_g"] = float(step_optimizer(gen, opt_g_acc, sched_g, cfg.clip_grad_norm, accelerator))
        ema.update(vocoder)
        step += 1
        bar.update(1)
        for k, v in stats.items():
            accumulate(running, k, v)

        if due(step, cfg.log_every, stop_at):
            n = interval(step, cfg.log_every)
            means = train_means(dict(sorted(running.items())), n, accelerator)
            logger.log(step, {**means, "train/lr": sched_g.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch, **step_times(clock, n)})
            bar.set_postfix(mel_l1=f"{means.get('train/mel_l1', 0):.4f}",
                            loss_d=f"{means.get('train/loss_d', 0):.3f}")
            running, clock = {}, start_clock()

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # validation never draws from the global RNG, so resuming stays bit-exact
                ema.copy_to(ema_model)
                metrics = _validate(ema_model, to_mel, stft_loss, valid, device)
                logger.log(step, metrics)
                _write_samples(out / "samples" / f"step-{step:09d}", ema_model, to_mel, valid, cfg.num_samples,
                               device, logger, step)
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. export the EMA generator in fp16 (weight norm folded) ---------------------------------------
    if is_main:
        ema.copy_to(ema_model)
    return finish(out, ema_model, is_main=is_main, logger=logger, accelerator=accelerator)


# ------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def _validate(vocoder: Any, to_mel: Any, stft_loss: Any, valid: torch.Tensor, device: torch.device
              ) -> dict[str, float]:
    """Mel L1 and multi-resolution STFT distance of EMA-generator resyntheses of the validation clips."""
    l1, stft, n = 0.0, 0.0, 0
    for chunk in valid.split(8):
        y = chunk.to(device)  # [b, T]
        mel = to_mel(y)
        y_hat = vocoder(mel)
        l1 += mel_l1(to_mel(y_hat), mel).item() * len(y)
        stft += stft_loss(y_hat, y).item() * len(y)
        n += len(y)
    return {"valid/mel_l1": l1 / n, "valid/stft": stft / n}


@torch.no_grad()
def _write_samples(folder: Path, vocoder: Any, to_mel: Any, valid: torch.Tensor, num: int, device: torch.device,
                   logger: MetricsLogger, step: int) -> None:
    sr, hop = vocoder.config.sampling_rate, vocoder.config.hop_length
    for i in range(min(num, valid.shape[0])):
        y = valid[i: i + 1].to(device)
        mel = to_mel(y)
        y_hat = vocoder(mel)[0]  # [T]
        save_samples(folder, f"clip{i}", sr, wave=y_hat, mels={"target": mel[0], "vocoder": to_mel(y_hat[None])[0]},
                     hop_length=hop)
        logger.log_audio(step, f"samples/clip{i}", y_hat, sr)

