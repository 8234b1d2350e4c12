"""Train the RVQ neural codec (EnCodec architecture) for the token backend.

    soundsmith train codec --data data/corpus --out runs/codec [--config my.json] [--resume] [--max-steps N]
    accelerate launch --multi_gpu --num_processes 2 -m soundsmith.cli train codec ...

Generator: `soundsmith.codecs.neural_codec.NeuralCodec` (SEANet encoder/decoder from transformers, our
`ResidualVQ` with EMA codebooks, dead-code refresh and quantizer dropout). Discriminator: EnCodec's
multi-scale STFT discriminator (MS-STFTD), narrowed for CPU and shown `disc_clips` clips per batch.
For the first `vq_warmup_steps` the codec trains as a plain autoencoder; at the first quantized step
every RVQ level is k-means-initialised from `kmeans_batches` batches of latents.
Per step, as in EnCodec (without its loss balancer; fixed weights instead, as DAC does):
    1. y_hat = G(y), with a random number of RVQ levels on a share of the batches (quantizer dropout)
    2. discriminator: hinge loss on D(y) vs D(y_hat.detach()); clip; step
    3. generator: l1 * |y - y_hat| + stft * MR-STFT + mel * multi-scale mel L1 + commit * commitment
       (+ adv * hinge adversarial + fm * feature matching once step >= disc_start_step); clip; step
then log (losses, levels used, code perplexity per level), and every N steps validate at K levels and
at `valid_levels` (the coarse split), write WAV + mel PNG samples, checkpoint. No weight EMA: the
codebooks are fitted to the live encoder's latents, which an averaged encoder would not produce.
At the end the codec is exported in fp16 to `OUT/export/` (`NeuralCodec.save_pretrained`).

Run folder: config.json, metrics.jsonl, tensorboard/, samples/step-XXXXXXXXX/, checkpoints/, export/.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.core.run_lock import releases_folder_locks
from torch import Tensor, nn

from .config import CONFIGS, bounded
from .discriminators import MultiScaleSTFTDiscriminator
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
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .metrics_log import MetricsLogger, save_samples

log = logging.getLogger(__name__)

COMPONENT = "codec"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class CodecTrainConfig(RunConfig, betas=(0.5, 0.9), clip_grad_norm=10.0):  # EnCodec's lr (3e-4) and betas
    """Everything a codec run needs besides the data and run folders: `RunConfig`'s fields (a batch of
    clips; lr and betas for G and D; `model`: NeuralCodecConfig fields), then the codec's own."""

    grad_accum: int = bounded(1, 1)  # micro-steps per optimizer step
    crop_seconds: float = bounded(1.0, 0.0, 60.0, low_open=True)  # EnCodec: 1 s; a whole number of code frames
    l1_weight: float = bounded(0.1, 0.0)  # EnCodec lambda_t
    stft_weight: float = bounded(1.0, 0.0)  # multi-resolution STFT (spectral convergence + log-magnitude)
    mel_weight: float = bounded(5.0, 0.0)  # multi-scale log-mel L1 (EnCodec lambda_f over 2^5..2^11 windows)
    mel_scales: tuple[int, ...] = (256, 512, 1024, 2048)  # window sizes; hop = window / 4
    commit_weight: float = bounded(1.0, 0.0)  # EnCodec lambda_w
    # Steps trained as a plain autoencoder before quantizing: at initialisation the encoder's latents
    # are a near-constant vector with tiny spread, and codebooks fitted to them go stale within a few
    # steps (every latent then picks one code). k-means on latents that already carry the signal lasts.
    vq_warmup_steps: int = bounded(0, 0)
    kmeans_batches: int = bounded(8, 1)  # batches of latents for the k-means initialisation of the codebooks
    adv_weight: float = bounded(1.0, 0.0)
    fm_weight: float = bounded(2.0, 0.0)
    disc_start_step: int = bounded(0, 0)  # train on the reconstruction losses alone before this step
    disc_n_ffts: tuple[int, ...] = (1024, 256)  # EnCodec: (1024, 2048, 512, 256, 128)
    disc_filters: int = bounded(4, 1)  # EnCodec: 32
    disc_max_filters: int = bounded(16, 1)  # EnCodec: 1024
    # clips of each batch the discriminator sees (real and reconstructed): on a CPU the 2-D STFT
    # convolutions cost more than the codec itself, so the adversarial terms use a share of the batch
    disc_clips: int = bounded(4, 1)
    valid_levels: int = bounded(3, 1)  # also validate with this many levels (the token backend's coarse split)
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_workers: int = bounded(1, 0, 64)
    num_valid_clips: int = bounded(16, 1)
    valid_seconds: float = bounded(2.0, 0.0, 60.0, low_open=True)
    num_samples: int = bounded(3, 0)  # validation clips written as WAV + PNG at each evaluation

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mel_scales or any(s < 16 or s & (s - 1) for s in self.mel_scales):
            raise ValueError(f"field 'mel_scales' must hold powers of 2 >= 16, got {self.mel_scales}")
        if not self.disc_n_ffts or any(n < 16 or n & (n - 1) for n in self.disc_n_ffts):
            raise ValueError(f"field 'disc_n_ffts' must hold powers of 2 >= 16, got {self.disc_n_ffts}")


class MultiScaleMelLoss(nn.Module):
    """Mean over window sizes of L1 between log-mels (EnCodec's / DAC's multi-scale mel loss).

    Each scale is the house mel front-end (`soundsmith.codecs.mel`, Slaney, magnitude) with window
    n, hop n / 4 and n / 16 mel bins (at least 16, at most 128), so small windows see timing and
    large ones pitch. Call: `loss(fake [B, T] or [B, 1, T], real) -> scalar`.
    """

    def __init__(self, sample_rate: int, scales: tuple[int, ...] = (256, 512, 1024, 2048)):
        super().__init__()
        from soundsmith.codecs.mel import MelConfig, MelSpectrogram

        self.mels = nn.ModuleList(
            MelSpectrogram(MelConfig(sample_rate=sample_rate, n_fft=n, hop_length=n // 4, win_length=n,
                                     n_mels=min(128, max(16, n // 16)), f_max=sample_rate / 2))
            for n in scales)

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        fake, real = fake.reshape(-1, fake.shape[-1]), real.reshape(-1, real.shape[-1])  # [B, T]
        return sum(F.l1_loss(mel(fake), mel(real)) for mel in self.mels) / len(self.mels)


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/codec", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) the RVQ codec; return the export folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/codec.json`.
    """
    from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig

    from .datasets import AudioCaptionDataset

    # 1. config, run folder, resume point -----------------------------------------------------------
    out, ckpt, config, cfg, run, stop_at = open_run(
        CodecTrainConfig, config, DEFAULT_CONFIG, data=data, out=out, resume=resume, max_steps=max_steps,
        overrides=overrides, force_change=force_change)
    codec_cfg = model_config(NeuralCodecConfig, cfg.model, config)
    if cfg.valid_levels > codec_cfg.n_levels:
        raise ValueError(f"{config}: field 'valid_levels' must be in [1, {codec_cfg.n_levels}] (the model's "
                         f"n_levels), got {cfg.valid_levels}")

    # 2. accelerator: device, processes, mixed precision (GPU only; fp32 on CPU) ---------------------
    accelerator, is_main, device = start_accelerator(cfg)  # seeded: identical initial weights in every process

    # 3. data: random crops of the train split in a resumable order; fixed validation crops ---------
    sr, hop = codec_cfg.sample_rate, codec_cfg.hop_length
    for name in ("crop_seconds", "valid_seconds"):
        if round(getattr(cfg, name) * sr) % hop:
            raise ValueError(f"{config}: field '{name}' must be a whole number of code frames ({hop / sr:g} s "
                             f"each), got {getattr(cfg, name)}")
    train_set = AudioCaptionDataset(data, sample_rate=sr, channels=codec_cfg.audio_channels,
                                    crop_seconds=cfg.crop_seconds, random_crop=True, seed=cfg.seed, split="train")
    valid = validation_batch(data, sr, cfg.valid_seconds, cfg.num_valid_clips, channels=codec_cfg.audio_channels)

    # 4. models, optimizers, LR schedules ------------------------------------------------------------
    codec = NeuralCodec(codec_cfg).train()
    disc = MultiScaleSTFTDiscriminator(cfg.disc_n_ffts, filters=cfg.disc_filters,
                                       max_filters=cfg.disc_max_filters).train()
    stft_loss = MultiResolutionSTFTLoss().to(device)
    mel_loss = MultiScaleMelLoss(sr, cfg.mel_scales).to(device)
    opt_g, sched_g = optimizer_with_schedule(codec.parameters(), cfg)
    opt_d, sched_d = optimizer_with_schedule(disc.parameters(), cfg)
    gen, dis, opt_g_acc, opt_d_acc = accelerator.prepare(codec, disc, opt_g, opt_d)
    objects = {"codec": codec, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d,
               "sched_g": sched_g, "sched_d": sched_d}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler
    if is_main:
        sizes = codec.num_parameters()
        log.info("codec: %s parameters (+ %d codebook entries); discriminator: %d", sizes["encoder"] + sizes["decoder"],
                 sizes["codebooks"], sum(p.numel() for p in disc.parameters()))

    # 5. resume: weights and codebooks, optimizers, schedules, RNG states and the data position -----
    # each process reseeded (its own draws); OUT created and locked: after the data and models are checked
    step, batches, sampler, batch_iter, logger, bar = resume_clips(ckpt, objects, accelerator, train_set, cfg, run,
                                                                   stop_at, desc="codec")

    # 6. the loop ------------------------------------------------------------------------------------
    running: dict[str, float] = {}
    clock = start_clock()  # wall and CPU time of the logging interval
    while step < stop_at:
        use_gan = step >= cfg.disc_start_step and (cfg.adv_weight > 0 or cfg.fm_weight > 0)
        quantize = step >= cfg.vq_warmup_steps
        n_micro = cfg.grad_accum
        # 6.0 first quantized step: k-means initialisation of every level from several batches' latents
        # (drawn from the data stream, so a resumed run draws the same ones)
        if quantize and not bool(codec.quantizer.layers[-1].codebook.inited.item()):
            with torch.no_grad():
                latents = []
                for _ in range(cfg.kmeans_batches):
                    latents.append(codec(next(batch_iter)["wave"].to(device), quantize=False).latent)
                    batches += 1
                codec.quantizer.initialize_(torch.cat(latents))  # [N, D, S]; rank 0's codebooks everywhere
        # 6a. codec forward on every micro-batch (kept for the generator step below)
        micro = []
        stats: dict[str, float] = {}
        for i in range(n_micro):
            batch = next(batch_iter)
            batches += 1
            y = batch["wave"].to(device)  # [B, C, T], T = S * hop
            with no_sync(accelerator, gen, sync=i == n_micro - 1), accelerator.autocast():
                result = gen(y, quantize=quantize)  # quantizer dropout picks the levels; codebooks take an EMA step
            micro.append((y, result))
            accumulate(stats, "levels", result.n_levels / n_micro)
            if quantize:
                accumulate(stats, "perplexity", result.perplexity.float().mean().item() / n_micro)
            accumulate(stats, "latent_spread", result.latent.detach().std(dim=(0, 2)).mean().item() / n_micro)

        # 6b. discriminator step: real vs detached reconstruction (hinge, as EnCodec), on disc_clips clips
        if use_gan:
            for i, (y, result) in enumerate(micro):
                with no_sync(accelerator, dis, sync=i == n_micro - 1), accelerator.autocast():
                    mono, mono_hat = _mono(y[: cfg.disc_clips]), _mono(result.audio[: cfg.disc_clips].detach())
                    real, fake = dis(torch.cat([mono, mono_hat])).split([len(mono), len(mono)])
                    loss_d = hinge_discriminator_loss(real.logits, fake.logits)
                    accelerator.backward(loss_d / n_micro)
                accumulate(stats, "loss_d", loss_d.item() / n_micro)
            stats["grad_norm_d"] = float(accelerator.clip_grad_norm_(dis.parameters(), cfg.clip_grad_norm or math.inf))
            opt_d_acc.step()
        sched_d.step()
        opt_d_acc.zero_grad(set_to_none=True)

        # 6c. generator step: reconstruction + commitment (+ adversarial + feature matching)
        for i, (y, result) in enumerate(micro):
            with no_sync(accelerator, gen, dis, sync=i == n_micro - 1), accelerator.autocast():
                y_hat = result.audio.float()
                loss_l1 = F.l1_loss(y_hat, y)
                loss_stft = stft_loss(y_hat, y)
                loss_mel = mel_loss(y_hat, y)
                loss_g = (cfg.l1_weight * loss_l1 + cfg.stft_weight * loss_stft + cfg.mel_weight * loss_mel
                          + cfg.commit_weight * result.commit_loss)
                if use_gan:
                    with torch.no_grad():  # the real branch only gives feature-matching targets
                        real = dis(_mono(y[: cfg.disc_clips]))
                    fake = dis(_mono(y_hat[: cfg.disc_clips]))
                    loss_adv = hinge_generator_loss(fake.logits)
                    loss_fm = feature_matching_loss(real.features, fake.features)
                    loss_g = loss_g + cfg.adv_weight * loss_adv + cfg.fm_weight * loss_fm
                    accumulate(stats, "loss_adv", loss_adv.item() / n_micro)
                    accumulate(stats, "loss_fm", loss_fm.item() / n_micro)
                accelerator.backward(loss_g / n_micro)
            for name, value in (("loss_g", loss_g), ("l1", loss_l1), ("stft", loss_stft), ("mel", loss_mel),
                                ("commit", result.commit_loss)):
                accumulate(stats, name, value.item() / n_micro)
        stats["grad_norm_g"] = float(step_optimizer(gen, opt_g_acc, sched_g, cfg.clip_grad_norm, accelerator))
        opt_d_acc.zero_grad(set_to_none=True)  # D's grads from the generator's backward are not used
        step += 1
        bar.update(1)
        for k, v in stats.items():
            accumulate(running, k, v)

        if due(step, cfg.log_every, stop_at):
            n = interval(step, cfg.log_every)
            means = train_means(dict(sorted(running.items())), n, accelerator)
            logger.log(step, {**means, "train/lr": sched_g.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch, **step_times(clock, n)})
            bar.set_postfix(mel=f"{means.get('train/mel', 0):.3f}", stft=f"{means.get('train/stft', 0):.3f}",
                            ppl=f"{means.get('train/perplexity', 0):.0f}")
            running, clock = {}, start_clock()

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # eval mode draws nothing from the global RNG, so resuming stays bit-exact
                codec.eval()
                metrics = _validate(codec, mel_loss, stft_loss, valid, device, (codec_cfg.n_levels, cfg.valid_levels))
                logger.log(step, metrics)
                _write_samples(out / "samples" / f"step-{step:09d}", codec, valid, cfg.num_samples, device, logger,
                               step, cfg.valid_levels)
                codec.train()
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. export in fp16 ------------------------------------------------------------------------------
    return finish(out, codec.eval(), is_main=is_main, logger=logger, accelerator=accelerator)


# ------------------------------------------------------------------------------------------- helpers


def _mono(wave: Tensor) -> Tensor:
    """`[B, C, T]` -> `[B, 1, T]` for the (mono) discriminator."""
    return wave.mean(1, keepdim=True) if wave.shape[1] > 1 else wave


@torch.no_grad()
def _validate(codec: Any, mel_loss: Any, stft_loss: Any, valid: Tensor, device: torch.device,
              levels: tuple[int, ...]) -> dict[str, float]:
    """Multi-scale mel L1 and MR-STFT distance of reconstructions at each number of levels in `levels`."""
    metrics: dict[str, float] = {}
    for n_levels in dict.fromkeys(levels):  # unique, in order
        mel, stft, n = 0.0, 0.0, 0
        for chunk in valid.split(8):
            y = chunk.to(device)  # [b, C, T]
            y_hat = codec.decode(codec.encode(y, n_levels=n_levels), num_samples=y.shape[-1])
            mel += mel_loss(y_hat, y).item() * len(y)
            stft += stft_loss(y_hat, y).item() * len(y)
            n += len(y)
        metrics[f"valid/mel_l{n_levels}"] = mel / n
        metrics[f"valid/stft_l{n_levels}"] = stft / n
    return metrics


@torch.no_grad()
def _write_samples(folder: Path, codec: Any, valid: Tensor, num: int, device: torch.device, logger: MetricsLogger,
                   step: int, coarse_levels: int) -> None:
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    sr = codec.sample_rate
    to_mel = MelSpectrogram(MelConfig(sample_rate=sr, f_max=min(8000.0, sr / 2))).to(device)
    for i in range(min(num, valid.shape[0])):
        y = valid[i: i + 1].to(device)  # [1, C, T]
        full = codec.reconstruct(y)[0].mean(0)  # [T]
        coarse = codec.reconstruct(y, n_levels=coarse_levels)[0].mean(0)
        save_samples(folder, f"clip{i}", sr, wave=full,
                     mels={"target": to_mel(y[0].mean(0)[None])[0], f"{codec.max_levels} levels": to_mel(full[None])[0],
                           f"{coarse_levels} levels": to_mel(coarse[None])[0]},
                     hop_length=to_mel.cfg.hop_length)
        save_samples(folder, f"clip{i}-l{coarse_levels}", sr, wave=coarse)
        logger.log_audio(step, f"samples/clip{i}", full, sr)

