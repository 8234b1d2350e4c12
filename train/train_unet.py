"""Train the latent-diffusion UNet on latents precomputed with the mel VAE and cached.

    soundsmith train unet --data data/corpus --out runs/unet --config my.json [--resume] [--max-steps N]

The config names the frozen parts: the mel VAE + vocoder (`codec`, a mel codec folder; or a `vae` folder and
optionally a `vocoder`: a registry name of codecs/vocoders.py, default griffin-lim, or a trained HiFi-GAN
folder) and the CLAP (`clap`). The vocoder only turns validation samples into audio: training needs none. First, every clip of the train and valid splits is encoded once (the VAE posterior's mean
and std, scaled; the CLAP audio embedding of the clip; the CLAP text embeddings of its captions) into
`OUT/cache/` (train/latent_cache.py), reused while the parts and the data are unchanged. Then the loop
reads top to bottom:

    per step: crop latent windows, draw z = mean + std * eps, pick each clip's condition (its CLAP
    audio embedding with probability `audio_prob`, else one of its caption embeddings: AudioLDM trains
    on audio embeddings so unlabelled audio is usable), drop it to zeros with probability
    `cond_dropout` (for classifier-free guidance), noise to a random timestep, predict epsilon or v,
    min-SNR-weighted MSE (Hang et al. 2023), clip, step, EMA; log; every N steps validate (fixed
    noise, EMA weights), write sample clips with their CLAP scores, checkpoint.

At the end the EMA UNet is exported with the parts as a pipeline folder (`OUT/export/`, fp16,
`LDMPipeline.from_pretrained` / `load_pipeline` load it), recording the fingerprints of the VAE and CLAP
it was trained against.

Fine-tuning (train/finetune.py): with `init` (`--init MODEL_DIR`: ours, or a diffusers AudioLDM folder) the
UNet starts from that folder's, and the VAE, vocoder, CLAP, noise schedule (prediction type) and
unconditional embedding come from it too; with `lora_rank` only a LoRA adapter trains and the export is the
adapter folder. Without --config such a run reads `train/configs/unet-finetune.json` / `unet-lora.json`.

Run folder: config.json, cache/, metrics.jsonl, tensorboard/, samples/step-XXXXXXXXX/, checkpoints/, export/.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import releases_folder_locks
from soundsmith.gen.tempo import TEMPO_DIM, TempoConditioner, TempoReader, grow_unet_for_tempo
from torch import Tensor

from .checkpoint import ResumableSampler, resume_point
from .config import CONFIGS, bounded, config_to_dict, load_config
from .datasets import clip_tempi
from .ema import EMA
from .finetune import (
    AdapterExport,
    FinetuneConfig,
    InitModel,
    ModelFolderExport,
    check_lora_options,
    default_config,
    ignore_fields,
    load_init,
    prepare_model,
    trainable,
)
from .latent_cache import LatentCache, build_cache
from .loop import (
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
from .metrics_log import MetricsLogger, progress_bar, save_samples
from .mixup import prepare_mixup
from .run_folder import RunFolder

log = logging.getLogger(__name__)

COMPONENT = "unet"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"


@dataclass
class UNetTrainConfig(FinetuneConfig, max_steps=20000, batch_size=16, lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01,
                      warmup_steps=500, log_every=20, eval_every=500, save_every=500):
    """Everything a UNet run needs besides the data and run folders: `RunConfig`'s fields (a batch of
    latent windows; `model`: UNetConfig fields), `FinetuneConfig`'s (init, LoRA), then the UNet's own."""

    codec: str | None = None  # a MelLatentCodec folder (vae/ + its vocoder spec); or give vae (and vocoder)
    vae: str | None = None  # a MelVAE export (soundsmith train vae)
    vocoder: str | None = None  # with vae: a vocoder registry name (default griffin-lim) or a HiFi-GAN folder
    clap: str | None = None  # our CLAP folder (soundsmith train clap) or a transformers ClapModel folder
    grad_accum: int = bounded(1, 1)
    crop_seconds: float = bounded(5.0, 0.04, 600.0)  # training window; the pipeline windows longer audio by it
    ema_decay: float = bounded(0.999, 0.0, 0.999999)
    prediction_type: str = bounded("v_prediction", choices=("epsilon", "v_prediction"))
    snr_gamma: float | None = bounded(5.0, 0.0, low_open=True)  # min-SNR weighting; None: plain MSE
    condition: str = bounded("mix", choices=("audio", "text", "mix"))  # which CLAP embedding conditions
    audio_prob: float = bounded(0.5, 0.0, 1.0)  # with "mix": share of examples on their audio embedding
    cond_dropout: float = bounded(0.1, 0.0, 1.0)  # condition -> zeros (the unconditional embedding)
    sample_posterior: bool = True  # z = mean + std * eps (else the posterior mean)
    captions_per_clip: int = bounded(4, 1, 64)  # caption embeddings cached per clip (drawn from the labels)
    # tempo conditioning (gen/tempo.py): a tempo reader folder (`soundsmith train tempo-reader`) turns it on; the
    # UNet then also takes the tempo features of each music clip's own tempo, dropped to "no tempo" with
    # probability `tempo_dropout` (so prompts that name no tempo still work). With --init a UNet without the
    # input is grown (new weights at zero) and the reader is exported with the model.
    tempo_reader: str | None = None
    tempo_dropout: float = bounded(0.3, 0.0, 1.0)
    # beat-synchronous mixup of music clips (MusicLDM; train/mixup.py): "latent" mixes cached latents on the
    # fly, "audio" caches rendered mixtures; "none" (default) trains on the clips as they are
    mixup: str = bounded("none", choices=("none", "latent", "audio"))
    mixup_prob: float = bounded(0.5, 0.0, 1.0)  # share of mixable (music) examples replaced by a mixture
    mixup_max_tempo_ratio: float = bounded(1.05, 1.0, 2.0)  # partners' tempi within this ratio
    mixup_alpha: float = bounded(5.0, 0.0, 100.0, low_open=True)  # lambda ~ Beta(alpha, alpha)
    mixup_pairs_per_clip: int = bounded(2, 1, 64)  # "audio": mixtures rendered per music clip
    mixed_precision: str = bounded("bf16", choices=("no", "fp16", "bf16"))  # GPU only; CPU runs fp32
    num_valid_batches: int = bounded(4, 1)  # validation loss over this many fixed batches
    sample_prompts: tuple[str, ...] = ("rain falling on a roof", "a dog barking", "piano music", "a woman speaking")
    sample_steps: int = bounded(16, 1, 1000)
    sample_seconds: float = bounded(5.0, 0.04, 60.0)
    # settings of the exported pipeline (LDMConfig)
    scheduler: str = "dpmsolver++"
    num_inference_steps: int = bounded(16, 1, 1000)
    guidance_scale: float = bounded(3.0, 0.0, 100.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.condition == "audio" and self.model.get("cross_attention"):
            raise ValueError("field 'model': cross_attention needs text conditioning (condition 'text' or 'mix')")


# ---------------------------------------------------------------------------------------------- parts


def load_parts(cfg: UNetTrainConfig, where: str) -> tuple[Any, Any]:
    """(MelLatentCodec, ClapConditioner) named by the config; one-line errors name the field."""
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.vocoders import DEFAULT_VOCODER, VOCODERS
    from soundsmith.gen.conditioners import ClapConditioner

    if cfg.codec is not None:
        codec = MelLatentCodec.from_pretrained(cfg.codec)
    elif cfg.vae is not None:
        name = cfg.vocoder or DEFAULT_VOCODER
        spec = {"name": name} if name in VOCODERS else {"name": "hifigan", "path": str(Path(name).resolve())}
        codec = MelLatentCodec.from_parts(cfg.vae, spec, base_dir=Path(cfg.vae).resolve().parent)
    else:
        raise ValueError(f"{where}: give field 'codec' (a mel codec folder) or 'vae' (a VAE folder)")
    if cfg.clap is None:
        raise ValueError(f"{where}: field 'clap' (a CLAP folder) is required")
    conditioner = ClapConditioner.from_pretrained(Path(cfg.clap))
    if not conditioner.has_audio_tower and cfg.condition != "text":
        raise ValueError(f"{where}: field 'condition' is {cfg.condition!r} but the CLAP in {cfg.clap} has no audio "
                         "tower; use condition 'text'")
    codec.eval().requires_grad_(False)
    conditioner.model.eval().requires_grad_(False)
    return codec, conditioner


# ------------------------------------------------------------------------------------------ batches


def make_batch(cache: LatentCache, idx: list[int], crop: int, cfg: UNetTrainConfig, g: torch.Generator,
               mixup: Any = None, null: Tensor | None = None, tempo: list[float | None] | None = None
               ) -> tuple[Tensor, Tensor, Tensor, list[str | None]]:
    """Latent windows `[B, C, crop, F']`, frame mask `[B, crop]`, conditions `[B, D]` and the caption of
    each text-conditioned example (None otherwise: audio-conditioned or dropped). A dropped condition is
    `null` (`[D]`, the pipeline's unconditional embedding: the CLAP embedding of "" for AudioLDM), default zeros.

    With `tempo` (each cached clip's BPM, None where it has none) the conditions are `[B, D + TEMPO_DIM]`: the
    CLAP part, then the clip's tempo features (gen/tempo.py), zeros when the condition is dropped or, with
    probability `cfg.tempo_dropout`, the tempo alone (a mixture's partners are within 5 % of its tempo).

    With `cfg.mixup` on and a `mixup` index (train/mixup.py `MixupIndex`), each mixable example is
    replaced by a beat-synchronous mixture with probability `cfg.mixup_prob`.
    All draws come from `g`, so a batch is a function of the step's generator state.
    """
    c, _, f = cache.mean.shape
    z = torch.zeros(len(idx), c, crop, f)
    mask = torch.zeros(len(idx), crop)
    cond = torch.zeros(len(idx), cache.audio_emb.shape[1])
    if null is not None:
        cond[:] = null
    texts: list[str | None] = []
    bpms: list[float | None] = []
    for b, i in enumerate(idx):
        n = cache.frames(i)
        start = int(torch.randint(0, max(1, n - crop + 1), (1,), generator=g))
        lo = int(cache.offsets[i]) + start
        width = min(crop, n)
        mean = cache.mean[:, lo:lo + width].float()
        std = cache.std[:, lo:lo + width].float()
        eps = torch.randn(mean.shape, generator=g) if cfg.sample_posterior else 0.0
        z[b, :, :width] = mean + std * eps
        mask[b, :width] = 1.0
        use_audio = cfg.condition == "audio" or (cfg.condition == "mix" and float(torch.rand((), generator=g))
                                                 < cfg.audio_prob)
        dropped = float(torch.rand((), generator=g)) < cfg.cond_dropout
        text = None
        if not dropped:
            if use_audio:
                cond[b] = cache.audio_emb[i]
            else:
                rows = cache.caption_rows(i)
                row = rows[int(torch.randint(0, len(rows), (1,), generator=g))]
                cond[b], text = cache.text_emb[row], cache.captions[row]
        if (mixup is not None and cfg.mixup != "none" and mixup.mixable(i)
                and float(torch.rand((), generator=g)) < cfg.mixup_prob):
            text = mixup.mix_example(cache, z, cond, b, i, start, width, use_audio=use_audio, dropped=dropped,
                                     sample_posterior=cfg.sample_posterior, alpha=cfg.mixup_alpha, g=g)
        texts.append(text)  # dropped: zeros, the unconditional embedding the pipeline uses
        if tempo is not None:
            tempo_dropped = float(torch.rand((), generator=g)) < cfg.tempo_dropout
            bpms.append(None if dropped or tempo_dropped else tempo[i])
    if tempo is not None:
        from soundsmith.gen.tempo import tempo_features

        cond = torch.cat([cond, tempo_features(bpms)], dim=1)  # [B, D + TEMPO_DIM]
    return z, mask, cond, texts


def diffusion_loss(unet: Any, scheduler: Any, z0: Tensor, mask: Tensor, cond: Tensor, tokens: Any,
                   cfg: UNetTrainConfig, g: torch.Generator | None) -> Tensor:
    """Noise z0 to random timesteps, predict epsilon or v, min-SNR-weighted masked MSE (a scalar)."""
    b = z0.shape[0]
    device = z0.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g).to(device)
    noise = torch.randn(z0.shape, generator=g).to(device)
    zt = scheduler.add_noise(z0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
    states, attn_mask = tokens if tokens is not None else (None, None)
    pred = unet(zt, t, encoder_hidden_states=states, class_labels=cond, encoder_attention_mask=attn_mask).sample
    m = mask[:, None, :, None].to(device)  # [B, 1, S, 1]: padded frames of short clips do not count
    mse = ((pred.float() - target.float()) ** 2 * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * z0.shape[1] * z0.shape[3])
    if cfg.snr_gamma is None:
        return mse.mean()
    alphas = scheduler.alphas_cumprod.to(device)[t]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=cfg.snr_gamma)
    weight = clipped / snr if cfg.prediction_type == "epsilon" else clipped / (snr + 1)  # min-SNR-gamma
    return (weight * mse).mean()


# ------------------------------------------------------------------------------------------------ loop


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/unet", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) the latent-diffusion UNet; return the exported pipeline folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/unet.json` (with
    `init` among the overrides: `unet-finetune.json`, or `unet-lora.json` with `lora_rank`).
    """
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from soundsmith.gen.schedulers import default_noise_schedule
    from soundsmith.gen.unet import UNetConfig, build_unet, num_parameters

    # 1. config, run folder, resume point ---------------------------------------------------------
    out, ckpt, config = resume_point(out, resume, config, default_config("unet", DEFAULT_CONFIG, overrides))
    cfg = load_config(UNetTrainConfig, config, overrides)
    init = None
    if cfg.init:  # the UNet, its frozen parts and its noise schedule come from the model folder
        init = load_init(cfg.init, COMPONENT)
        cfg = _init_config(cfg, init, str(config))
        check_lora_options(init, cfg)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    stop_at = cfg.max_steps if max_steps is None else max_steps

    # 2. accelerator: device, processes, mixed precision (GPU only) -------------------------------
    accelerator, is_main, device = start_accelerator(cfg)

    # 3. frozen parts and the latent cache (built once by the main process) ------------------------
    if init is None:
        codec, conditioner = load_parts(cfg, str(config))
    else:
        codec, conditioner = init.pipe.codec, init.pipe.conditioner
        codec.eval().requires_grad_(False)
        conditioner.model.eval().requires_grad_(False)
    conditioner, reader = _tempo_parts(cfg, conditioner, str(config))  # the CLAP conditioner; the tempo reader
    # an init UNet without the tempo input grows one (new weights at zero), which only a full fine-tune can train
    grow = (init is not None and reader is not None
            and init.pipe.unet.config.projection_class_embeddings_input_dim == conditioner.dim)
    if grow and cfg.lora_rank is not None:
        raise ValueError(f"{config}: field 'tempo_reader' gives the UNet of {init.folder} a new tempo input, which a "
                         "LoRA run cannot train (drop lora_rank, or start from a tempo-conditioned model)")
    frame_s = codec.samples_per_latent_frame / codec.sample_rate
    crop = max(1, round(cfg.crop_seconds / frame_s))
    unet_cfg = None
    if init is None:
        try:
            unet_cfg = UNetConfig.from_dict({"latent_channels": codec.vae.config.latent_channels,
                                             "latent_bins": codec.vae.config.n_mels // codec.vae.config.downsample_factor,
                                             "condition_dim": conditioner.dim + (TEMPO_DIM if reader else 0),
                                             "sample_frames": crop, **cfg.model},
                                            where=f"{config}: field 'model'")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config}: field 'model': {err}") from None
    run.open(accelerator)  # creates and locks OUT (the latent cache goes into it): after the parts load
    cache_dir = out / "cache"
    if is_main:
        build_cache(codec, conditioner, Path(data), "train", cache_dir, captions_per_clip=cfg.captions_per_clip,
                    seed=cfg.seed)
    accelerator.wait_for_everyone()
    train_cache = build_cache(codec, conditioner, Path(data), "train", cache_dir,
                              captions_per_clip=cfg.captions_per_clip, seed=cfg.seed)
    valid_cache = _valid_cache(codec, conditioner, Path(data), cache_dir, cfg, is_main, accelerator)
    tempo = valid_tempo = None
    if reader is not None:  # each cached clip's own tempo (the caches hold the splits' clips in order)
        tempo = clip_tempi(Path(data), "train")
        valid_tempo = tempo if valid_cache is None else clip_tempi(Path(data), "valid")
    valid_cache = valid_cache or train_cache
    mixup = None
    if cfg.mixup != "none":  # beat index (+ rendered mixtures for "audio"), built once by the main process
        if is_main:
            prepare_mixup(cfg, codec, conditioner, Path(data), "train", cache_dir, train_cache)
        accelerator.wait_for_everyone()
        mixup = prepare_mixup(cfg, codec, conditioner, Path(data), "train", cache_dir, train_cache)

    # 4. model, noise schedule, optimizer, LR schedule, EMA ----------------------------------------
    if init is None:
        unet = build_unet(unet_cfg).train()
        noise_schedule = default_noise_schedule(cfg.prediction_type)
    else:  # a copy of the init UNet (+ a LoRA adapter: then only the adapter trains)
        unet = prepare_model(init, cfg)
        if grow:
            unet = grow_unet_for_tempo(unet).train()
            log.info("grew the init's UNet by %d tempo inputs (new weights start at zero)", TEMPO_DIM)
        noise_schedule = dict(init.pipe.noise_schedule)
    log.info("UNet: %.2f M parameters (%.1f MB in fp16), %.2f M trained", num_parameters(unet) / 1e6,
             num_parameters(unet) * 2 / 1e6, sum(p.numel() for p in trainable(unet)) / 1e6)
    scheduler = DDPMScheduler.from_config(noise_schedule)
    optimizer, lr_schedule = optimizer_with_schedule(trainable(unet), cfg)
    ema = EMA(unet, cfg.ema_decay, trainable_only=cfg.lora_rank is not None)
    model, opt = accelerator.prepare(unet, optimizer)
    ema.to(device)
    conditioner.to(device)
    objects = {"model": unet, "optimizer": optimizer, "scheduler": lr_schedule, "ema": ema}
    if accelerator.scaler is not None:
        objects["scaler"] = accelerator.scaler

    # 5. resume: weights, optimizer, schedule, EMA, RNG states, data position -----------------------
    set_seed(cfg.seed, device_specific=True)
    step, batches = restore(ckpt, objects, accelerator)
    sampler = ResumableSampler(len(train_cache), cfg.batch_size, seed=cfg.seed,
                               num_replicas=accelerator.num_processes, rank=accelerator.process_index, start=batches)
    batch_iter = iter(sampler)
    logger = MetricsLogger(out, enabled=is_main, resume_step=step if ckpt is not None else None)
    bar = progress_bar(stop_at, step, enabled=is_main, desc="unet")
    ema_model = copy.deepcopy(unet).eval()
    use_tokens = unet_cfg.cross_attention if init is None else bool(init.pipe.config.cross_attention)
    null = None if init is None else conditioner.null_embedding(1)[0].float().cpu()  # what dropped conditions become
    pipe_config = None if init is None else init.pipe.config  # samples with the init model's settings
    sampling_conditioner = conditioner if reader is None else TempoConditioner(conditioner, reader)
    if init is not None:  # the export writes the init's parts with this conditioner (and its reader)
        init.pipe.conditioner = sampling_conditioner

    # 6. the loop ------------------------------------------------------------------------------------
    running = {"loss": 0.0}
    while step < stop_at:
        for micro in range(cfg.grad_accum):
            idx = [i for i, _ in next(batch_iter)]
            batches += 1
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))  # from the restored global RNG
            z0, mask, cond, texts = make_batch(train_cache, idx, crop, cfg, g, mixup, null, tempo)
            tokens = conditioner.token_states(texts) if use_tokens else None
            with no_sync(accelerator, model, sync=micro == cfg.grad_accum - 1), accelerator.autocast():
                loss = diffusion_loss(model, scheduler, z0.to(device), mask, cond.to(device), tokens, cfg, g)
                accelerator.backward(loss / cfg.grad_accum)
            running["loss"] += loss.item() / cfg.grad_accum
        grad_norm = step_optimizer(model, opt, lr_schedule, cfg.clip_grad_norm, accelerator)
        ema.update(unet)
        step += 1
        bar.update(1)

        if due(step, cfg.log_every, stop_at):
            means = train_means(running, interval(step, cfg.log_every), accelerator)
            logger.log(step, {**means, "train/grad_norm": float(grad_norm), "train/lr": lr_schedule.get_last_lr()[0],
                              "train/epoch": batches / sampler.batches_per_epoch})
            bar.set_postfix(loss=f"{means['train/loss']:.4f}")
            running = {"loss": 0.0}

        if due(step, cfg.eval_every, stop_at):
            if is_main:  # validation draws only from its own generators, so resuming stays exact
                ema.copy_to(ema_model)
                logger.log(step, {"valid/loss": validation_loss(ema_model, scheduler, valid_cache, crop, cfg,
                                                                conditioner, device, use_tokens, valid_tempo)})
                _write_samples(out / "samples" / f"step-{step:09d}", ema_model, codec, sampling_conditioner,
                               noise_schedule, cfg, crop, logger, step, pipe_config)
            accelerator.wait_for_everyone()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                accelerator=accelerator)
    bar.close()

    # 7. export the EMA UNet with its parts as a pipeline folder (fp16); a LoRA run: the adapter folder ---
    export = None
    if is_main:
        ema.copy_to(ema_model)
        if init is None:
            export = _pipeline(ema_model, codec, sampling_conditioner, noise_schedule, cfg, crop)
        elif cfg.lora_rank is not None:
            export = AdapterExport(ema_model, init, extra={"steps": step, "data": str(Path(data).resolve())})
        else:
            export = ModelFolderExport(ema_model, init)
    return finish(out, export, is_main=is_main, logger=logger, accelerator=accelerator, dtype="fp16")


def _init_config(cfg: UNetTrainConfig, init: InitModel, where: str) -> UNetTrainConfig:
    """The run's config with what --init decides: no part fields or model fields (the folder's parts and UNet
    are used), the folder's prediction type, and text conditioning where its CLAP has no audio tower."""
    cfg = ignore_fields(cfg, {"codec": None, "vae": None, "vocoder": None, "clap": None, "model": {}}, where)
    prediction = init.pipe.noise_schedule.get("prediction_type", "epsilon")
    changes: dict[str, Any] = {}
    if prediction != cfg.prediction_type:
        log.info("%s: prediction_type %s (the noise schedule of %s)", where, prediction, init.folder)
        changes["prediction_type"] = prediction
    if cfg.condition != "text" and not init.pipe.conditioner.has_audio_tower:
        log.warning("%s: the CLAP of %s has no audio tower; conditioning on captions only (condition 'text')",
                    where, init.folder)
        changes["condition"] = "text"
    if bool(init.pipe.config.cross_attention) and cfg.condition == "audio":
        raise ValueError(f"{where}: field 'condition' is 'audio', but the UNet of {init.folder} attends to the "
                         "prompt's tokens: use condition 'text' or 'mix'")
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _tempo_parts(cfg: UNetTrainConfig, conditioner: Any, where: str) -> tuple[Any, Any]:
    """(the plain CLAP conditioner, the tempo reader or None): the config's reader, else the init model's."""
    reader = None
    if isinstance(conditioner, TempoConditioner):  # fine-tuning a tempo-conditioned model
        conditioner, reader = conditioner.inner, conditioner.reader
    if cfg.tempo_reader is not None:
        try:
            reader = TempoReader.from_pretrained(cfg.tempo_reader)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{where}: field 'tempo_reader': {err}") from None
        if reader.config.dim != conditioner.dim:
            raise ValueError(f"{where}: field 'tempo_reader' reads {reader.config.dim}-d CLAP embeddings but the CLAP "
                             f"gives {conditioner.dim}-d")
    return conditioner, reader


def _valid_cache(codec: Any, conditioner: Any, data: Path, cache_dir: Path, cfg: UNetTrainConfig, is_main: bool,
                 accelerator: Any) -> LatentCache | None:
    try:
        if is_main:
            build_cache(codec, conditioner, data, "valid", cache_dir, captions_per_clip=1, seed=cfg.seed)
        accelerator.wait_for_everyone()
        return build_cache(codec, conditioner, data, "valid", cache_dir, captions_per_clip=1, seed=cfg.seed)
    except ValueError as err:
        log.warning("no validation split (%s); validating on training clips", err)
        return None


@torch.no_grad()
def validation_loss(unet: Any, scheduler: Any, cache: LatentCache, crop: int, cfg: UNetTrainConfig,
                    conditioner: Any, device: torch.device, use_tokens: bool = False,
                    tempo: list[float | None] | None = None) -> float:
    """Mean loss over `num_valid_batches` fixed batches (fixed crops, timesteps and noise; tempo always given)."""
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    fixed = UNetTrainConfig(**{**config_to_dict(cfg), "cond_dropout": 0.0, "sample_posterior": False,
                               "tempo_dropout": 0.0,
                               "condition": "text" if cfg.condition != "audio" else "audio"})
    total, n = 0.0, 0
    size = min(cfg.batch_size, len(cache))
    for k in range(cfg.num_valid_batches):
        idx = [(k * size + j) % len(cache) for j in range(size)]
        z0, mask, cond, texts = make_batch(cache, idx, crop, fixed, g, tempo=tempo)
        tokens = conditioner.token_states(texts) if use_tokens else None
        total += diffusion_loss(unet, scheduler, z0.to(device), mask, cond.to(device), tokens, fixed, g).item()
        n += 1
    return total / n


def _pipeline(unet: Any, codec: Any, conditioner: Any, noise_schedule: dict, cfg: UNetTrainConfig, crop: int,
              config: Any = None) -> Any:
    """The pipeline of `unet` with the parts; `config` (an LDMConfig: a fine-tuned model's own) or one made for
    a UNet trained from scratch on `crop` frames."""
    from soundsmith.core.weights import weights_fingerprint
    from soundsmith.pipelines.ldm import LDMConfig, LDMPipeline

    if config is not None:
        pipe = LDMPipeline(unet, codec, conditioner, noise_schedule, config)
        pipe.progress_bar = False
        return pipe
    frame_s = codec.samples_per_latent_frame / codec.sample_rate
    window = crop * frame_s
    config = LDMConfig(scheduler=cfg.scheduler, num_inference_steps=cfg.num_inference_steps,
                       guidance_scale=cfg.guidance_scale, duration_s=min(5.0, window * 4), window_s=window,
                       window_overlap_s=round(window / 4 / frame_s) * frame_s,
                       cross_attention=bool(cfg.model.get("cross_attention", False)),
                       trained_with={"vae": weights_fingerprint(codec.vae), "clap": conditioner.fingerprint()},
                       mel=codec.vae.config.mel.to_dict())
    pipe = LDMPipeline(unet, codec, conditioner, noise_schedule, config)
    pipe.progress_bar = False
    return pipe


@torch.no_grad()
def _write_samples(folder: Path, unet: Any, codec: Any, conditioner: Any, noise_schedule: dict,
                   cfg: UNetTrainConfig, crop: int, logger: MetricsLogger, step: int, config: Any = None) -> None:
    """Generate the sample prompts with the EMA weights (fixed seeds); WAV + mel PNG + CLAP score each."""
    if not cfg.sample_prompts:
        return
    pipe = _pipeline(unet, codec, conditioner, noise_schedule, cfg, crop, config).to(next(unet.parameters()).device)
    out = pipe(list(cfg.sample_prompts), duration_s=cfg.sample_seconds, num_inference_steps=cfg.sample_steps,
               seed=0, watermark=False, clap_score=True)
    scores = []
    for i, prompt in enumerate(out.prompts):
        wave = out.audios[i]  # [1, T]
        mel = codec.mel(wave.to(next(codec.parameters()).device))[0]
        name = f"{i}-" + "-".join(prompt.split()[:6])
        save_samples(folder, name, out.sample_rate, wave=wave, mels={prompt: mel}, hop_length=codec.hop_length)
        logger.log_audio(step, f"samples/{name}", wave, out.sample_rate)
        if out.clap_scores is not None:
            scores.append(out.clap_scores[i])
    if scores:
        logger.log(step, {"samples/clap_score": float(np.mean(scores))})
