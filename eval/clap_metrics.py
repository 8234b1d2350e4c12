"""CLAP metrics on a captioned corpus split: retrieval and zero-shot classification.

    soundsmith eval clap --model DIR --data DIR [--split test] [--num-clips N]

- Retrieval, text->audio and audio->text: recall@1/5/10 and mAP. A hit is any clip with the same
  label set as the query (`label_key`), because captions are templated and many clips share one
  description, so clip identity is ill-posed. One caption per clip, drawn from its labels with a fixed
  seed, in-template ("train" templates) and paraphrased ("heldout" templates, never seen in training).
- Zero-shot accuracy per label family (SFX class, instrument, language, tempo bucket, mode): each clip
  is scored against one prompt per candidate class and the best must be one of the clip's labels.
  Prompts: "canonical" (`captions.class_caption`, e.g. "the sound of rain"; tempo/mode: "slow music",
  "music in a minor key"), and label-swapped captions: the clip's own labels with the family's value
  replaced by each candidate, rendered with the same seeded template ("train" and "heldout" styles),
  so only the class words differ between a clip's prompts.

The maths (`retrieval_metrics`, `average_precision`, `zero_shot_accuracy`) is kept apart from I/O.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.core.captions import caption, class_caption, language_name, table
from soundsmith.core.vocabulary import (
    FAMILIES,
    INSTRUMENTS,
    LANGUAGES,
    MODES,
    SFX_CLASSES,
    family_of,
    tempo_bands,
)
from torch import Tensor

log = logging.getLogger(__name__)

RECALL_AT = (1, 5, 10)
STYLES = ("train", "heldout")
# Issue 7's targets: zero-shot accuracy (in-template prompts), text->audio R@10, paraphrase gap.
TARGETS = {"sfx_class": 0.9, "instrument": 0.7, "language": 0.9, "t2a_R@10": 0.6, "paraphrase_gap": 0.10}


# ------------------------------------------------------------------------------------------- labels


def label_key(labels: dict) -> tuple:
    """The label set that defines a retrieval hit (and a non-negative pair in training).

    sfx: the set of classes; music: the set of instruments and the style; speech: language and voice.
    Tempo, key, loudness and the augmentation are left out: captions mention them only sometimes.
    """
    domain = labels.get("domain")
    if domain == "sfx":
        return ("sfx", tuple(sorted(labels.get("classes", ()))))
    if domain == "music":
        return ("music", tuple(sorted(labels.get("instruments", ()))), labels.get("style"))
    if domain == "speech":
        return ("speech", labels.get("language"), labels.get("voice"))
    return (str(domain),)


def _band_bpm(name: str) -> float:
    """A tempo inside band `name`, to render "this clip, but slow" captions."""
    lo, hi = next((lo, hi) for lo, hi, n in tempo_bands() if n == name)
    if lo <= 0:
        return hi - 15.0
    if hi >= 500:
        return lo + 20.0
    return (lo + hi) / 2


def candidates(family: str, seen: Sequence[str] = ()) -> list[str]:
    """Candidate classes of a family: the synthesizer's vocabulary plus any value seen in the data."""
    if family == "sfx_class":
        vocab = SFX_CLASSES
    elif family == "instrument":
        vocab = INSTRUMENTS
    elif family == "language":
        vocab = tuple(LANGUAGES)
    elif family == "tempo":
        vocab = tuple(name for _, _, name in tempo_bands())
    elif family == "mode":
        vocab = MODES
    else:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return list(dict.fromkeys([*vocab, *seen]))


def canonical_prompt(family: str, value: str) -> str:
    if family == "sfx_class":
        return class_caption("sfx", value)
    if family == "instrument":
        return class_caption("music", value)
    if family == "language":
        return class_caption("speech", value)
    if family == "tempo":
        return f"{table()['music']['tempo'][value][0]} music"
    if family == "mode":
        return f"music in a {value} key"
    raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")


def swapped_labels(labels: dict, family: str, value: str) -> dict:
    """The clip's labels with `family` set to `value` alone."""
    out = dict(labels)
    if family == "sfx_class":
        out["classes"] = [value]
    elif family == "instrument":
        out["instruments"] = [value]
    elif family == "language":
        out["language"], out["language_name"] = value, language_name(value)
    elif family == "tempo":
        out["tempo_bpm"] = _band_bpm(value)
    elif family == "mode":
        out["mode"] = value
    return out


# ---------------------------------------------------------------------------------------------- maths


def average_precision(scores: Tensor, relevant: Tensor) -> float:
    """AP of one ranking: mean over the relevant items of the precision at their rank. `[N]`, `[N]` bool."""
    order = torch.argsort(scores, descending=True, stable=True)
    rel = relevant[order].float()
    if rel.sum() == 0:
        return 0.0
    precision = rel.cumsum(0) / torch.arange(1, len(rel) + 1, dtype=torch.float32)
    return float((precision * rel).sum() / rel.sum())


def retrieval_metrics(queries: Tensor, items: Tensor, relevant: Tensor, ks: Sequence[int] = RECALL_AT
                      ) -> dict[str, float]:
    """Recall@k (a relevant item in the top k) and mAP. queries `[Q, D]`, items `[N, D]`, relevant `[Q, N]`."""
    sims = queries.float() @ items.float().T  # [Q, N]
    order = torch.argsort(sims, dim=1, descending=True, stable=True)
    ranked = torch.gather(relevant, 1, order)  # [Q, N] relevance in rank order
    out = {f"R@{k}": float(ranked[:, :k].any(1).float().mean()) for k in ks}
    out["mAP"] = float(np.mean([average_precision(sims[i], relevant[i]) for i in range(len(sims))]))
    return out


def zero_shot_accuracy(audio: Tensor, prompts: Tensor, truth: Sequence[Sequence[int]]) -> float:
    """Share of clips whose best prompt is one of their true classes.

    audio `[N, D]`; prompts `[N, K, D]` (per-clip prompts) or `[K, D]` (shared); truth: class indices per clip.
    """
    if prompts.ndim == 2:
        sims = audio.float() @ prompts.float().T  # [N, K]
    else:
        sims = torch.einsum("nd,nkd->nk", audio.float(), prompts.float())
    best = sims.argmax(1).tolist()
    return float(np.mean([b in set(t) for b, t in zip(best, truth)])) if best else float("nan")


def relevance(query_keys: Sequence[tuple], item_keys: Sequence[tuple]) -> Tensor:
    """`[Q, N]` bool: item shares the query's label set."""
    return torch.tensor([[q == k for k in item_keys] for q in query_keys], dtype=torch.bool)


# ----------------------------------------------------------------------------------------------- I/O


def clap_metrics_dict(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, split: str = "test",
                      num_clips: int | None = None, model: Any = None, seed: int = 0,
                      batch_size: int = 32) -> dict[str, Any]:
    """All metrics as a dict (see the module docstring); `model` may be passed already loaded."""
    from soundsmith.codecs.audio import read_audio
    from soundsmith.gen.clap import load_clap

    from .codec_report import read_split

    rows = read_split(data_dir, split, num_clips)  # checks the data before the model loads
    rows = [r for r in rows if isinstance(r.get("labels"), dict) and r["labels"].get("domain")]
    if not rows:
        raise ValueError(f"{data_dir}: no clips with structured labels in split {split!r} (our corpus needed)")
    clap = load_clap(model_dir) if model is None else model
    clap.eval()
    labels = [r["labels"] for r in rows]
    keys = [label_key(lab) for lab in labels]

    # 1. audio embeddings, batched while consecutive clips have the same length ----------------------
    audio_seconds, t0 = 0.0, time.perf_counter()
    embeddings, pending = [], []

    def flush() -> None:
        if pending:
            embeddings.append(clap.embed_audio(np.stack(pending), clap.sample_rate))  # [b, 1, T]
            pending.clear()

    for row in rows:
        wave, sr = read_audio(Path(data_dir) / row["file_name"], sample_rate=clap.sample_rate, channels=1)
        audio_seconds += wave.shape[-1] / sr
        if pending and (pending[0].shape != wave.shape or len(pending) == batch_size):
            flush()
        pending.append(wave)
    flush()
    audio = torch.cat(embeddings)  # [N, D]
    audio_rtf = audio_seconds / (time.perf_counter() - t0)  # includes reading the files

    # 2. retrieval with one seeded caption per clip, per template style -------------------------------
    rel = relevance(keys, keys)  # [N, N]: the same for both directions (symmetric)
    retrieval, text_rate = {}, float("nan")
    for style in STYLES:
        texts = [caption(lab, np.random.default_rng([seed, i]), style=style) for i, lab in enumerate(labels)]
        t0 = time.perf_counter()
        text = clap.embed_text(texts, batch_size=batch_size)  # [N, D]
        if style == "train":
            text_rate = len(texts) / (time.perf_counter() - t0)
        retrieval[style] = {"t2a": retrieval_metrics(text, audio, rel), "a2t": retrieval_metrics(audio, text, rel.T)}

    # 3. zero-shot per family --------------------------------------------------------------------------
    zero_shot: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        members = [(i, fam[family]) for i, lab in enumerate(labels) if family in (fam := family_of(lab))]
        if not members:
            continue
        classes = candidates(family, [v for _, vals in members for v in vals])
        truth = [[classes.index(v) for v in vals] for _, vals in members]
        idx = [i for i, _ in members]
        result: dict[str, Any] = {"clips": len(members), "classes": len(classes)}
        canon = clap.embed_text([canonical_prompt(family, c) for c in classes])  # [K, D]
        result["canonical"] = zero_shot_accuracy(audio[idx], canon, truth)
        for style in STYLES:
            texts = [caption(swapped_labels(labels[i], family, c), np.random.default_rng([seed, i, 1]), style=style)
                     for i in idx for c in classes]
            prompts = clap.embed_text(texts, batch_size=batch_size).view(len(idx), len(classes), -1)
            result[style] = zero_shot_accuracy(audio[idx], prompts, truth)
        zero_shot[family] = result

    return {"model": str(model_dir), "data": str(data_dir), "split": split, "clips": len(rows),
            "threads": torch.get_num_threads(), "retrieval": retrieval, "zero_shot": zero_shot,
            "speed": {"audio_x_realtime": audio_rtf, "text_captions_per_s": text_rate}}


def clap_report(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, split: str = "test",
                num_clips: int | None = None) -> str:
    """The metrics as a printable table, with issue 7's targets and whether each is reached."""
    return format_report(clap_metrics_dict(model_dir, data_dir, split=split, num_clips=num_clips))


def format_report(r: dict[str, Any]) -> str:
    lines = [f"CLAP metrics: {r['model']} on {r['data']} (split {r['split']}, {r['clips']} clips, "
             f"CPU threads {r['threads']})", "",
             "retrieval (hit = same label set)   R@1     R@5    R@10     mAP"]
    for style in STYLES:
        for direction, name in (("t2a", "text->audio"), ("a2t", "audio->text")):
            m = r["retrieval"][style][direction]
            lines.append(f"  {name:<12} {style + ' captions':<17}" + "".join(
                f"{m[k]:>8.3f}" for k in ("R@1", "R@5", "R@10", "mAP")))
    lines += ["", "zero-shot accuracy      clips  classes  canonical  in-template  paraphrase"]
    for family, m in r["zero_shot"].items():
        lines.append(f"  {family:<20}{m['clips']:>7}{m['classes']:>9}{m['canonical']:>11.3f}{m['train']:>13.3f}"
                     f"{m['heldout']:>12.3f}")
    speed = r["speed"]
    lines += ["", f"speed: audio {speed['audio_x_realtime']:.0f}x real time, text {speed['text_captions_per_s']:.0f} "
              "captions/s (wall clock, this run)", "", "targets (issue 7):"]
    lines += [f"  {check}" for check in target_checks(r)]
    return "\n".join(lines)


def target_checks(r: dict[str, Any]) -> list[str]:
    """One line per target: value, threshold and reached / missed."""
    out = []

    def line(name: str, value: float, goal: float, ok: Callable[[float, float], bool], sign: str) -> None:
        out.append(f"{name:<46}{value:>8.3f} {sign} {goal:<5} {'reached' if ok(value, goal) else 'MISSED'}")

    zs = r["zero_shot"]
    for family in ("sfx_class", "instrument", "language"):
        if family in zs:
            line(f"zero-shot {family} (in-template)", zs[family]["train"], TARGETS[family], lambda v, g: v >= g, ">=")
    t2a = r["retrieval"]["train"]["t2a"]["R@10"]
    line(f"text->audio R@10 ({r['clips']} clips; target on 1000)", t2a, TARGETS["t2a_R@10"], lambda v, g: v >= g, ">=")
    gaps = [r["retrieval"]["train"]["t2a"]["R@10"] - r["retrieval"]["heldout"]["t2a"]["R@10"]]
    gaps += [m["train"] - m["heldout"] for m in zs.values()]
    line("largest paraphrase drop (R@10, zero-shot)", max(gaps), TARGETS["paraphrase_gap"], lambda v, g: v <= g, "<=")
    if math.isfinite(r["speed"]["audio_x_realtime"]):
        line("audio embedding speed (x real time)", r["speed"]["audio_x_realtime"], 200, lambda v, g: v >= g, ">=")
        line("text embedding speed (captions/s)", r["speed"]["text_captions_per_s"], 200, lambda v, g: v >= g, ">=")
    return out
