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
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from soundsmith.codecs.run_lock import releases_folder_locks

from .checkpoint import (
    EpochIndexed,
    ResumableSampler,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from .config import bounded, check_ranges, config_to_dict, load_config
from .discriminators import HifiGanDiscriminator
from .ema import EMA
from .losses import (
    MultiResolutionSTFTLoss,
    feature_matching_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_l1,
)
from .metrics_log import MetricsLogger, progress_bar, save_samples
from .run_folder import RunFolder
from .schedules import SCHEDULES, make_scheduler

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "vocoder.json"
COMPONENT = "vocoder"


@dataclass
class VocoderTrainConfig:
    """Everything a vocoder run needs besides the data and run folders. Steps are optimizer steps."""

    seed: int = bounded(0, 0, 2**63 - 1)
    max_steps: int = bounded(2000, 1)  # the LR schedule spans this; --max-steps may stop earlier
    batch_size: int = bounded(8, 1)  # clips per process per micro-step
    grad_accum: int = bounded(1, 1)  # micro-steps per optimizer step
    crop_seconds: float = bounded(0.5, 0.0, 60.0, low_open=True)  # HiFi-GAN: 8192 samples at 22 kHz = 0.37 s
    lr: float = bounded(2e-4, 0.0, 1.0, low_open=True)  # HiFi-GAN: 2e-4 for G and D
    betas: tuple[float, float] = (0.8, 0.99)  # HiFi-GAN
    weight_decay: float = bounded(0.0, 0.0, 1.0)
    schedule: str = bounded("cosine", choices=SCHEDULES)
    warmup_steps: int = bounded(0, 0)
    min_lr_ratio: float = bounded(0.1, 0.0, 1.0)
    clip_grad_norm: float | None = bounded(100.0, 0.0, low_open=True)  # a guard against spikes; None: off
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
    log_every: int = bounded(10, 1)
    eval_every: int = bounded(250, 1)
    save_every: int = bounded(250, 1)
    keep_last: int = bounded(3, 1)
    num_valid_clips: int = bounded(16, 1)
    valid_seconds: float = bounded(2.0, 0.0, 60.0, low_open=True)
    num_samples: int = bounded(3, 0)  # validation clips written as WAV + PNG at each evaluation
    model: dict = field(default_factory=dict)  # VocoderConfig fields (upsample_initial_channel, ...)

    def __post_init__(self) -> None:
        check_ranges(self)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"field 'betas' must be two numbers in [0, 1), got {self.betas}")
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

    Args:
        config: JSON config file (default: `train/configs/vocoder.json`; on resume: the run's config.json).
        data: corpus folder (train split for training, valid split for validation).
        out: run folder.
        resume: continue from the newest checkpoint in `out`.
        max_steps: stop once this many optimizer steps are done (default: the config's max_steps).
        overrides: "key=value" strings or a dict applied on top of the config file.
        force_change: on resume, accept settings that change the run (logged in OUT/config_changes.jsonl).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from soundsmith.codecs.mel import MelSpectrogram
    from soundsmith.codecs.vocoder import Vocoder, VocoderConfig

    from .datasets import AudioCaptionDataset, collate

    # 1. config, run folder, resume point -----------------------------------------------------------
    out, ckpt, config = resume_point(out, resume, config, DEFAULT_CONFIG)
    cfg = load_config(VocoderTrainConfig, config, overrides)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    try:
        voc_cfg = VocoderConfig.from_dict(cfg.model)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config}: field 'model': {err}") from None
    stop_at = cfg.max_steps if max_steps is None else max_steps

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    is_main, device = accelerator.is_main_process, accelerator.device
    set_seed(cfg.seed)  # identical initial weights in every process

    # 3. data: random crops of the train split in a resumable order; fixed validation crops ---------
    sr, hop = voc_cfg.sampling_rate, voc_cfg.hop_length
    if round(cfg.crop_seconds * sr) % hop:
        raise ValueError(f"{config}: field 'crop_seconds' must be a whole number of mel frames "
                         f"({hop / sr:g} s each), got {cfg.crop_seconds}")
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=cfg.crop_seconds, random_crop=True,
                                    seed=cfg.seed, split="train")
    valid = _validation_batch(AudioCaptionDataset, data, sr, cfg.valid_seconds, cfg.num_valid_clips)

    # 4. models, optimizers, LR schedules, EMA -------------------------------------------------------
    vocoder = Vocoder(voc_cfg)
    vocoder.apply_weight_norm()  # HiFi-GAN trains with weight norm; export folds it
    vocoder.train()
    disc = HifiGanDiscriminator(cfg.mpd_periods, cfg.mpd_channels, cfg.msd_scales, cfg.msd_channels).train()
    to_mel = MelSpectrogram(voc_cfg.mel).to(device)
    stft_loss = MultiResolutionSTFTLoss().to(device)
    opt_g = torch.optim.AdamW(vocoder.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched_g = make_scheduler(opt_g, kind=cfg.schedule, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
                             min_ratio=cfg.min_lr_ratio)
    sched_d = make_scheduler(opt_d, kind=cfg.schedule, warmup_steps=cfg.warmup_steps,  # D's starts with D
                             total_steps=max(1, cfg.max_steps - cfg.disc_start_step), min_ratio=cfg.min_lr_ratio)
    ema = EMA(vocoder, cfg.ema_decay)
    gen, dis, opt_g_acc, opt_d_acc = accelerator.prepare(vocoder, disc, opt_g, opt_d)
    ema.to(device)
    objects = {"generator": vocoder, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d,
               "sched_g": sched_g, "sched_d": sched_d, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 5. resume: weights, optimizers, schedules, EMA, RNG states and the data position ---------------
    step, batches = 0, 0
    set_seed(cfg.seed, device_specific=True)
    if ckpt is not None:
        meta = load_checkpoint(ckpt, objects, accelerator=accelerator)
        step, batches = meta["step"], meta["data_position"]["batches"]
        log.info("resumed %s at step %d", ckpt, step)
    sampler = ResumableSampler(len(train_set), cfg.batch_size, seed=cfg.seed, num_replicas=accelerator.num_processes,
                               rank=accelerator.process_index, start=batches)
    loader = torch.utils.data.DataLoader(
        EpochIndexed(train_set), batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by the loader
    )
    batch_iter = iter(loader)
    run.open(accelerator)  # creates and locks OUT: after the data and models are checked
    logger = MetricsLogger(out, enabled=is_main, resume_step=step if ckpt is not None else None)
    bar = progress_bar(stop_at, step, enabled=is_main, desc="vocoder")
    ema_model = copy.deepcopy(vocoder).eval()  # holds the EMA weights for validation and export
    last_saved = step

    def checkpoint() -> None:
        save_checkpoint(out, step, objects, data_position=sampler.position(batches), accelerator=accelerator,
                        keep_last=cfg.keep_last, extra={"component": COMPONENT, "config": config_to_dict(cfg)})

    def no_sync(*models: Any, sync: bool) -> ExitStack:
        """Skip the gradient all-reduce on all but the last micro-step (a no-op with one process)."""
        stack = ExitStack()
        if not sync:
            for m in models:
                stack.enter_context(accelerator.no_sync(m))
        return stack

    # 6. the loop ------------------------------------------------------------------------------------
    running: dict[str, float] = {}
    clock = (time.perf_counter(), time.process_time())  # wall and CPU time of the logging interval
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
                with no_sync(dis, sync=i == n_micro - 1), accelerator.autocast():
                    real, fake = dis(torch.cat([y, y_hat])).split([len(y), len(y)])
                    loss_d = lsgan_discriminator_loss(real.logits, fake.logits)
                    accelerator.backward(loss_d / n_micro)
                _add(stats, "loss_d", loss_d.item() / n_micro)
            stats["grad_norm_d"] = float(accelerator.clip_grad_norm_(dis.parameters(), cfg.clip_grad_norm or math.inf))
            opt_d_acc.step()
            sched_d.step()
            opt_d_acc.zero_grad(set_to_none=True)

        # 6c. generator step: reconstruction + feature matching + adversarial, against the updated D.
        # D is frozen and called unwrapped: the generator needs only its input gradients, so D's weight
        # gradients (a third of its backward) and their all-reduce would be wasted work.
        disc.requires_grad_(False)
        for i, (y, mel) in enumerate(micro):
            with no_sync(gen, sync=i == n_micro - 1), accelerator.autocast():
                y_hat = gen(mel)  # [B, T]
                mel_hat = to_mel(y_hat.float())
                loss_mel = mel_l1(mel_hat, mel)
                loss_g = cfg.mel_weight * loss_mel
                if cfg.stft_weight > 0:
                    loss_stft = stft_loss(y_hat.float(), y)
                    loss_g = loss_g + cfg.stft_weight * loss_stft
                    _add(stats, "loss_stft", loss_stft.item() / n_micro)
                if use_gan:
                    real, fake = disc(torch.cat([y, y_hat])).split([len(y), len(y)])
                    loss_adv = lsgan_generator_loss(fake.logits)
                    loss_fm = feature_matching_loss(real.features, fake.features)
                    loss_g = loss_g + cfg.adv_weight * loss_adv + cfg.fm_weight * loss_fm
                    _add(stats, "loss_adv", loss_adv.item() / n_micro)
                    _add(stats, "loss_fm", loss_fm.item() / n_micro)
                accelerator.backward(loss_g / n_micro)
            _add(stats, "loss_g", loss_g.item() / n_micro)
            _add(stats, "mel_l1", loss_mel.item() / n_micro)
        disc.requires_grad_(True)
        stats["grad_norm_g"] = float(accelerator.clip_grad_norm_(gen.parameters(), cfg.clip_grad_norm or math.inf))
        opt_g_acc.step()
        sched_g.step()
        opt_g_acc.zero_grad(set_to_none=True)
        ema.update(vocoder)
        step += 1
        bar.update(1)
        for k, v in stats.items():
            _add(running, k, v)

        if step % cfg.log_every == 0 or step == stop_at:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            means = {k: accelerator.reduce(torch.tensor(v / n, device=device), "mean").item()
                     for k, v in sorted(running.items())}
            wall, cpu = time.perf_counter() - clock[0], time.process_time() - clock[1]
            logger.log(step, {**{f"train/{k}": v for k, v in means.items()}, "train/lr": sched_g.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch,
                              "time/s_per_step": wall / n, "time/cpu_s_per_step": cpu / n})
            bar.set_postfix(mel_l1=f"{means.get('mel_l1', 0):.4f}", loss_d=f"{means.get('loss_d', 0):.3f}")
            running = {}
            clock = (time.perf_counter(), time.process_time())

        if step % cfg.eval_every == 0 or step == stop_at:
            if is_main:  # validation never draws from the global RNG, so resuming stays bit-exact
                ema.copy_to(ema_model)
                metrics = _validate(ema_model, to_mel, stft_loss, valid, device)
                logger.log(step, metrics)
                _write_samples(out / "samples" / f"step-{step:09d}", ema_model, to_mel, valid, cfg.num_samples,
                               device, logger, step)
            accelerator.wait_for_everyone()

        if step % cfg.save_every == 0 or step == stop_at:
            checkpoint()
            last_saved = step
    bar.close()
    if last_saved != step:
        checkpoint()

    # 7. export the EMA generator in fp16 (weight norm folded) ---------------------------------------
    export = out / "export"
    if is_main:
        ema.copy_to(ema_model)
        ema_model.save_pretrained(export, dtype=torch.float16)
        log.info("exported %s", export)
    logger.close()
    accelerator.wait_for_everyone()
    return export


# ------------------------------------------------------------------------------------------- helpers


def _add(acc: dict[str, float], key: str, value: float) -> None:
    acc[key] = acc.get(key, 0.0) + value


# Copied from soundsmith.train.train_vae._validation_batch
def _validation_batch(dataset_cls: Any, data: str | os.PathLike, sr: int, seconds: float, num: int) -> Any:
    """The first `num` clips of the valid split (center crops), as one batch `[N, T]` kept in memory."""
    from .datasets import collate

    try:
        valid_set = dataset_cls(data, sample_rate=sr, crop_seconds=seconds, random_crop=False, split="valid")
    except ValueError as err:
        log.warning("no validation split (%s); validating on the first training clips", err)
        valid_set = dataset_cls(data, sample_rate=sr, crop_seconds=seconds, random_crop=False, split="train")
    return collate([valid_set[i] for i in range(min(num, len(valid_set)))])["wave"][:, 0]  # [N, T]


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


def export(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Export the EMA generator of the newest checkpoint of `run_dir` in fp16 (to `run_dir/export` by default)."""
    from soundsmith.codecs.vocoder import Vocoder, VocoderConfig

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    cfg = load_config(VocoderTrainConfig, run_dir / "config.json")
    vocoder = Vocoder(VocoderConfig.from_dict(cfg.model))
    vocoder.apply_weight_norm()
    ema = EMA(vocoder, cfg.ema_decay)
    load_checkpoint(ckpt, {"ema": ema}, restore_rng=False)
    ema.copy_to(vocoder)
    return vocoder.save_pretrained(Path(out) if out is not None else run_dir / "export", dtype=torch.float16)
