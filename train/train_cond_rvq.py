"""Train the conditioning quantizer (gen/cond_tokens.py): an RVQ over CLAP *audio* embeddings of the corpus.

    soundsmith train cond-rvq --data data/corpus --out runs/cond-rvq [--clap models/clap] [--resume]

MusicLM's recipe: the RVQ learns from audio embeddings only (no captions needed); at inference the
text embedding goes through it. Steps:
    1. embed the corpus once with the CLAP and cache it (`OUT/cache/clap-embeddings.safetensors`,
       keyed by the CLAP's fingerprint): each train clip whole plus `crops_per_clip` seeded random crops
       (more embeddings than clips, and the LMs will see crop embeddings too); the valid split's clips
       and their captions' text embeddings for validation;
    2. a fresh run initialises the projections by PCA and every RVQ level by k-means on the cache;
    3. per step: a batch of cached embeddings -> quantize (EMA codebooks, dead-code refresh,
       straight-through) -> loss = mean(1 - cos(reconstruction, embedding)) + commit_weight * commitment
       -> AdamW on the two projections; every N steps validate and checkpoint (shared trainer,
       bit-exact resume).
Validation reports the reconstruction cosine of held-out audio embeddings and of text embeddings at
1, Q/4, Q/2 and Q levels, the cosine of the text's reconstruction with its clip's audio embedding
(against the raw text-audio cosine) and how often text and audio get the same first-level token.
The quantizer is exported in fp16 to `OUT/export/` with the CLAP's fingerprint in its config.

Run folder: config.json, metrics.jsonl, tensorboard/, cache/, checkpoints/, export/.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from soundsmith.core.run_lock import releases_folder_locks
from torch import Tensor

from .checkpoint import ResumableSampler, resume_point
from .config import CONFIGS, bounded, load_config
from .loop import (
    RunConfig,
    due,
    finish,
    interval,
    optimizer_with_schedule,
    restore,
    save_run_checkpoint,
    step_optimizer,
    train_means,
)
from .metrics_log import MetricsLogger, progress_bar
from .run_folder import RunFolder

log = logging.getLogger(__name__)

COMPONENT = "cond-rvq"
DEFAULT_CONFIG = CONFIGS / f"{COMPONENT}.json"
CACHE_NAME = "clap-embeddings.safetensors"


@dataclass
class CondRVQTrainConfig(RunConfig, max_steps=1500, lr=2e-3, warmup_steps=50, log_every=50):
    """Everything a cond-rvq run needs besides the data and run folders: `RunConfig`'s fields (`model`:
    ConditioningQuantizerConfig fields), then the quantizer's own."""

    batch_size: int = bounded(256, 2)  # cached embeddings per step
    commit_weight: float = bounded(0.1, 0.0)  # pulls the projected embedding towards its codewords
    clap: str = "models/clap"  # CLAP folder (ours or a transformers ClapModel); `--clap` sets it
    crops_per_clip: int = bounded(4, 0)  # seeded random crops embedded per train clip, besides the whole clip
    crop_seconds: float = bounded(2.5, 0.0, 60.0, low_open=True)
    max_train_clips: int = bounded(0, 0)  # 0: every train clip; N: the first N (quick runs)
    num_valid_clips: int = bounded(288, 1)  # valid-split clips (audio and caption) for validation

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("clap_fingerprint", "clap"):
            if key in self.model:
                raise ValueError(f"field 'model': {key!r} is set from the CLAP used, not by the config")


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/cond-rvq", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, clap_model: Any = None, force_change: bool = False) -> Path:
    """Train (or continue) the conditioning quantizer; return the export folder `OUT/export`.

    The arguments are every loop's (train/loop.py); `config` defaults to `train/configs/cond-rvq.json`
    (`clap=PATH` in `overrides` names the CLAP). `clap_model`: an already loaded CLAP (`ClapBase`) to
    use instead of loading `config.clap`.
    """
    from accelerate.utils import set_seed
    from soundsmith.core.weights import weights_fingerprint
    from soundsmith.gen.clap import load_clap
    from soundsmith.gen.cond_tokens import ConditioningQuantizer, ConditioningQuantizerConfig

    # 1. config, run folder, resume point, CLAP -----------------------------------------------------
    out, ckpt, config = resume_point(out, resume, config, DEFAULT_CONFIG)
    cfg = load_config(CondRVQTrainConfig, config, overrides)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    stop_at = cfg.max_steps if max_steps is None else max_steps
    clap = clap_model if clap_model is not None else load_clap(cfg.clap)
    clap.eval()
    clap_fp = weights_fingerprint(clap)
    try:
        q_cfg = ConditioningQuantizerConfig.from_dict({**cfg.model, "clap_fingerprint": clap_fp,
                                                        "clap": None if clap_model is not None else str(cfg.clap)},
                                                       f"{config}: field 'model'")
    except TypeError as err:
        raise ValueError(f"{config}: field 'model': {err}") from None
    run.open()  # creates and locks OUT (the embedding cache goes into it): after the data is checked

    # 2. the cached CLAP embeddings ------------------------------------------------------------------
    cache = embedding_cache(clap, data, out / "cache" / CACHE_NAME, seed=cfg.seed, crops_per_clip=cfg.crops_per_clip,
                            crop_seconds=cfg.crop_seconds, max_train_clips=cfg.max_train_clips,
                            num_valid_clips=cfg.num_valid_clips)
    train_emb = cache["train"]  # [N, E]
    if train_emb.shape[1] != q_cfg.embed_dim:
        raise ValueError(f"{config}: field 'model': embed_dim is {q_cfg.embed_dim} but the CLAP gives "
                         f"{train_emb.shape[1]}-d embeddings")
    log.info("cond-rvq: %d training embeddings, %d validation pairs", len(train_emb), len(cache["valid_audio"]))

    # 3. model (PCA + k-means initialised on a fresh run), optimizer, schedule -----------------------
    set_seed(cfg.seed)
    model = ConditioningQuantizer(q_cfg)
    if ckpt is None:
        model.init_from_data_(train_emb)
    model.train()
    optimizer, scheduler = optimizer_with_schedule(model.parameters(), cfg)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler}

    # 4. resume: weights, codebooks, optimizer, schedule, RNG states, data position ------------------
    step, batches = restore(ckpt, objects)
    sampler = ResumableSampler(len(train_emb), cfg.batch_size, seed=cfg.seed, start=batches)
    batch_iter = iter(sampler)
    logger = MetricsLogger(out, enabled=True, resume_step=step if ckpt is not None else None)
    if ckpt is None:
        logger.log(0, validate(model, cache))  # what PCA + k-means alone give
        model.train()
    bar = progress_bar(stop_at, step, desc="cond-rvq")

    # 5. the loop ------------------------------------------------------------------------------------
    running = {"loss": 0.0, "cosine": 0.0, "commit": 0.0, "perplexity": 0.0, "step_seconds": 0.0}
    while step < stop_at:
        t0 = time.perf_counter()
        idx = torch.tensor([i for i, _ in next(batch_iter)])
        batches += 1
        x = train_emb[idx]  # [B, E]
        result = model(x)
        cosine = (result.reconstruction * torch.nn.functional.normalize(x, dim=-1)).sum(-1).mean()
        loss = (1.0 - cosine) + cfg.commit_weight * result.commit_loss
        loss.backward()
        grad_norm = step_optimizer(model, optimizer, scheduler, cfg.clip_grad_norm)
        step += 1
        bar.update(1)
        running["loss"] += loss.item()
        running["cosine"] += cosine.item()
        running["commit"] += result.commit_loss.item()
        running["perplexity"] += result.perplexity.mean().item()
        running["step_seconds"] += time.perf_counter() - t0

        if due(step, cfg.log_every, stop_at):
            means = train_means(running, interval(step, cfg.log_every))  # one process: no all-reduce
            logger.log(step, {**means, "train/grad_norm": float(grad_norm), "train/lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(cos=f"{means['train/cosine']:.4f}")
            running = dict.fromkeys(running, 0.0)

        if due(step, cfg.eval_every, stop_at):
            logger.log(step, validate(model, cache))  # no random draws: resuming stays bit-exact
            model.train()

        if due(step, cfg.save_every, stop_at):  # due at stop_at too: a run always ends saved
            save_run_checkpoint(out, step, objects, COMPONENT, cfg, data_position=sampler.position(batches),
                                clap_fingerprint=clap_fp)
    bar.close()

    # 6. export in fp16 ------------------------------------------------------------------------------
    log.info("cond-rvq: %.2f MB in fp16", q_cfg.size_bytes() / 1e6)
    return finish(out, model.eval(), is_main=True, logger=logger)


# ------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def validate(model: Any, cache: dict[str, Tensor]) -> dict[str, float]:
    """Reconstruction cosines of held-out audio and text embeddings (see the module docstring)."""
    model.eval()
    audio = torch.nn.functional.normalize(cache["valid_audio"].float(), dim=-1)  # [M, E]
    text = torch.nn.functional.normalize(cache["valid_text"].float(), dim=-1)  # [M, E]
    q = model.n_levels
    out: dict[str, float] = {}
    audio_codes, text_codes = model.tokenize(audio), model.tokenize(text)  # [M, Q]
    for levels in sorted({1, max(1, q // 4), max(1, q // 2), q}):
        out[f"valid/audio_cosine@{levels}"] = (model.embed(audio_codes[:, :levels]) * audio).sum(-1).mean().item()
        out[f"valid/text_cosine@{levels}"] = (model.embed(text_codes[:, :levels]) * text).sum(-1).mean().item()
    text_recon = model.embed(text_codes)
    out["valid/text_recon_audio_cosine"] = (text_recon * audio).sum(-1).mean().item()
    out["valid/text_audio_cosine"] = (text * audio).sum(-1).mean().item()  # the same pairs, unquantized
    out["valid/level1_agreement"] = (audio_codes[:, 0] == text_codes[:, 0]).float().mean().item()
    out["valid/audio_codes_used@1"] = float(audio_codes[:, 0].unique().numel())
    return out


def embedding_cache(clap: Any, data: str | os.PathLike, path: Path, *, seed: int, crops_per_clip: int,
                    crop_seconds: float, max_train_clips: int, num_valid_clips: int) -> dict[str, Tensor]:
    """CLAP embeddings of the corpus, computed once and kept in `path` (rebuilt if its key differs).

    Returns `train [N, E]` (whole train clips, then their crops), `valid_audio [M, E]`, `valid_text [M, E]`.
    """
    from soundsmith.core.weights import read_state_dict, save_safetensors, weights_fingerprint

    from .datasets import AudioCaptionDataset

    key = {"clap_fingerprint": weights_fingerprint(clap), "data": str(Path(data).resolve()), "seed": str(seed),
           "crops_per_clip": str(crops_per_clip), "crop_seconds": repr(float(crop_seconds)),
           "max_train_clips": str(max_train_clips), "num_valid_clips": str(num_valid_clips)}
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
        if all(stored.get(k) == v for k, v in key.items()):
            log.info("using cached CLAP embeddings %s", path)
            return read_state_dict(path)
        log.info("%s was made with other settings or another CLAP; embedding again", path)

    sr = clap.sample_rate
    train_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=None, split="train")
    n_train = len(train_set) if max_train_clips == 0 else min(max_train_clips, len(train_set))
    t0 = time.perf_counter()
    parts = [_embed_whole(clap, train_set, range(n_train))]
    if crops_per_clip > 0:
        crops = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=crop_seconds, random_crop=True, seed=seed,
                                    split="train")
        for epoch in range(crops_per_clip):  # crop e of clip i: seeded by (seed, e, i), so the cache is reproducible
            crops.set_epoch(epoch)
            parts.append(_embed_equal(clap, crops, range(n_train)))
    try:
        valid_set = AudioCaptionDataset(data, sample_rate=sr, crop_seconds=None, split="valid")
    except ValueError as err:
        log.warning("no validation split (%s); validating on training clips", err)
        valid_set = train_set
    picks = _spread(len(valid_set), num_valid_clips)
    valid_audio = _embed_whole(clap, valid_set, picks)
    captions = [valid_set.records[i].captions[0] for i in picks]
    valid_text = torch.cat([clap.embed_text(captions[i:i + 64]).float().cpu() for i in range(0, len(captions), 64)])
    tensors = {"train": torch.cat(parts), "valid_audio": valid_audio, "valid_text": valid_text}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata={"format": "pt", **key})
    log.info("embedded %d train clips (+%d crops each) and %d valid clips in %.0f s", n_train, crops_per_clip,
             len(picks), time.perf_counter() - t0)
    return tensors


def _spread(total: int, num: int) -> list[int]:
    """Up to `num` indices evenly spread over `range(total)` (all of them when num >= total)."""
    count = min(num, total)
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


@torch.no_grad()
def _embed_whole(clap: Any, dataset: Any, indices: Any, batch: int = 32) -> Tensor:
    """Whole clips, batched when consecutive clips have the same length (padding would change them)."""
    out, group = [], []

    def flush() -> None:
        if group:
            out.append(clap.embed_audio(torch.stack(group), clap.sample_rate).float().cpu())
            group.clear()

    for i in indices:
        wave = dataset[i]["wave"]  # [C, T]
        if group and (wave.shape != group[0].shape or len(group) == batch):
            flush()
        group.append(wave)
    flush()
    return torch.cat(out) if out else torch.zeros(0, clap.dim)


@torch.no_grad()
def _embed_equal(clap: Any, dataset: Any, indices: Any, batch: int = 32) -> Tensor:
    """Fixed-length crops (zero-padded past a short clip's end, as the dataset returns them), batched."""
    indices = list(indices)
    out = []
    for s in range(0, len(indices), batch):
        waves = torch.stack([dataset[i]["wave"] for i in indices[s:s + batch]])  # [b, C, T]
        out.append(clap.embed_audio(waves, clap.sample_rate).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, clap.dim)
