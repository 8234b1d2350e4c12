"""Fit the tempo reader (gen/tempo.py): whether a prompt asks for music (so its tempo words count), from its CLAP
text embedding.

    soundsmith train tempo-reader --data data/corpus --out runs/tempo-reader [--clap models/clap]

Steps:
    1. for every clip of the train and valid splits, `captions_per_clip` captions drawn from its labels with
       the corpus's training templates, each with its clip's domain and the tempo band it names: its clip's
       ("slow" < 85 BPM <= "moderate" < 120 <= "fast") when its template names the tempo ("{tempo}" or
       "{bpm}"), else none;
    2. their CLAP text embeddings (the conditioner the UNet reads);
    3. a logistic regression music / not music (scikit-learn, L2), train captions only;
    4. validate on the valid clips' captions: music accuracy, and the reader's whole answer (figures, then
       tempo words where the prompt asks for music) read back as a band: its accuracy, its recall on the
       captions that name a tempo, and how often it gives a tempo to one that names none;
    5. export to `OUT/export/` (safetensors + config.json holding the band BPMs: each band's median tempo in the
       train split, and the fit's figures). A UNet run takes it with `--set tempo_reader=OUT/export`.

A closed-form fit has no optimizer state to resume: `--resume` reruns it with the run's saved config.
Run folder: config.json, metrics.jsonl, tensorboard/, export/.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.run_lock import releases_folder_locks

from .config import Config, bounded
from .metrics_log import MetricsLogger
from .run_folder import RunFolder, refit_config

log = logging.getLogger(__name__)


@dataclass
class TempoReaderTrainConfig(Config):
    clap: str = "models/clap"  # the CLAP whose text embeddings the reader reads (the UNet's own)
    seed: int = bounded(0, 0, 2**31 - 1)
    captions_per_clip: int = bounded(6, 1, 64)
    l2: float = bounded(1.0, 0.0, low_open=True)  # inverse regularisation strength C of scikit-learn
    threshold: float = bounded(0.5, 0.0, 1.0)  # P(music) needed before a tempo word counts


def clip_captions(records: list, k: int, rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """(captions, the domain of each, the tempo band each names or "none") for `records` (module docstring)."""
    from soundsmith.core.captions import caption_and_template
    from soundsmith.gen.tempo import tempo_band

    texts, domains, classes = [], [], []
    for rec in records:
        labels = rec.labels
        if not labels.get("domain"):
            continue
        for _ in range(k):
            try:
                text, template = caption_and_template(labels, rng, style="train")
            except (KeyError, ValueError, TypeError):
                break  # labels of another corpus
            names_tempo = labels.get("domain") == "music" and ("{tempo}" in template or "{bpm}" in template)
            texts.append(text)
            domains.append(str(labels["domain"]))
            classes.append(tempo_band(float(labels["tempo_bpm"])) if names_tempo else "none")
    return texts, domains, classes


@releases_folder_locks
def train(config: str | os.PathLike | None = None, data: str | os.PathLike = "data/corpus",
          out: str | os.PathLike = "runs/tempo-reader", resume: bool = False, max_steps: int | None = None,
          overrides: Any = None, force_change: bool = False) -> Path:
    """Fit the reader; return the export folder `OUT/export`. `max_steps` caps the number of train clips."""
    from sklearn.linear_model import LogisticRegression
    from soundsmith.gen.conditioners import ClapConditioner
    from soundsmith.gen.tempo import TempoReader, TempoReaderConfig, tempo_band

    from .datasets import read_records, select_split

    out, cfg = refit_config(out, resume, config, TempoReaderTrainConfig, overrides, "tempo-reader")
    clap_dir = Path(cfg.clap)
    if not (clap_dir / "config.json").is_file():
        raise FileNotFoundError(f"field 'clap': {clap_dir} is not a CLAP folder (no config.json)")
    run = RunFolder(out, cfg, data=data, resume=resume, force_change=force_change)
    _, records = read_records(data)
    train_recs = select_split(records, "train", Path(data))
    if max_steps is not None:
        train_recs = train_recs[: int(max_steps)]
    valid_recs = select_split(records, "valid", Path(data))
    music_bpm: dict[str, list[float]] = {"slow": [], "moderate": [], "fast": []}
    for rec in train_recs:
        if rec.labels.get("domain") == "music" and "tempo_bpm" in rec.labels:
            bpm = float(rec.labels["tempo_bpm"])
            music_bpm[tempo_band(bpm)].append(bpm)
    if not all(music_bpm.values()):
        raise ValueError(f"{data}: the train split needs music clips with 'tempo_bpm' labels in every tempo band "
                         f"(found {', '.join(f'{b} {len(v)}' for b, v in music_bpm.items())})")
    run.open()  # creates and locks OUT: after the data is checked

    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    conditioner = ClapConditioner.from_pretrained(clap_dir)
    conditioner.model.eval()

    def embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([conditioner.embed_text(texts[i:i + 256]).cpu() for i in range(0, len(texts), 256)]).numpy()

    train_texts, train_domains, _ = clip_captions(train_recs, cfg.captions_per_clip, rng)
    valid_texts, valid_domains, valid_classes = clip_captions(valid_recs, cfg.captions_per_clip, rng)
    x_train, x_valid = embed(train_texts), embed(valid_texts)
    y_train = np.array([d == "music" for d in train_domains], dtype=int)
    y_valid = np.array([d == "music" for d in valid_domains], dtype=int)
    if len(set(y_train.tolist())) < 2:
        raise ValueError(f"{data}: the train split needs music and other clips to tell them apart")
    model = LogisticRegression(C=cfg.l2, max_iter=2000).fit(x_train, y_train)
    band_bpm = {band: round(float(np.median(v)), 1) for band, v in music_bpm.items()}
    reader = TempoReader(torch.from_numpy(model.coef_[0].astype(np.float32)),
                         torch.tensor(float(model.intercept_[0])),
                         TempoReaderConfig(dim=x_train.shape[1], band_bpm=band_bpm, threshold=cfg.threshold))

    # the reader's whole answer (figures first), read back as a band, on the valid captions
    read = reader.read(valid_texts, torch.from_numpy(x_valid))
    given = [("none" if bpm is None else tempo_band(bpm)) for bpm in read]
    read_acc = float(np.mean([g == c for g, c in zip(given, valid_classes)]))
    asked = [i for i, c in enumerate(valid_classes) if c != "none"]
    recall = float(np.mean([given[i] == valid_classes[i] for i in asked])) if asked else float("nan")
    false_tempo = float(np.mean([given[i] != "none" for i, c in enumerate(valid_classes) if c == "none"]))
    fit = {"data": str(Path(data)), "clap": str(clap_dir), "train_captions": len(train_texts),
           "valid_captions": len(valid_texts), "music_train_accuracy": round(float(model.score(x_train, y_train)), 4),
           "music_valid_accuracy": round(float(model.score(x_valid, y_valid)), 4),
           "valid_read_accuracy": round(read_acc, 4), "valid_tempo_recall": round(recall, 4),
           "valid_false_tempo": round(false_tempo, 4), "seconds": round(time.perf_counter() - t0, 1)}
    reader.config.fit = fit
    logger = MetricsLogger(out)
    logger.log(len(train_recs), {k: float(v) for k, v in fit.items() if isinstance(v, (int, float))})
    logger.close()
    log.info("tempo-reader: %d train captions; valid music accuracy %.3f, read accuracy %.3f, tempo recall %.3f, "
             "a tempo given to %.3f of captions that name none (%.0f s)", len(train_texts), fit["music_valid_accuracy"],
             read_acc, recall, false_tempo, fit["seconds"])
    return reader.save_pretrained(out / "export")
