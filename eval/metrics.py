"""Classifier and text-audio metrics of a generated set (docs/metrics.md has each formula and its source).

- CLAP score: cosine of each clip's audio embedding with its prompt's text embedding (both L2-normalised),
  averaged per prompt and overall (gudgud96 `clap_score`, audiocraft `CLAPTextConsistencyMetric`).
- KL divergence between the label distributions a classifier gives a generated clip and its paired
  reference clip, both directions, softmax and sigmoid variants, as audioldm_eval (`kl_softmax`,
  `kl_sigmoid`) and audiocraft (`kld_pq`, `kld_qp`) report it: KL(p||q) = sum_k p_k (log p_k - log(q_k + 1e-6)).
  The sigmoid variant is audioldm_eval's: per-class sigmoids in the same formula (not a Bernoulli KL).
- Inception Score: exp(E_x KL(p(y|x) || p(y))) on softmax probabilities, over 10 shuffled splits
  (audioldm_eval `isc.py`: float64, shuffle seed 2020); mean and standard deviation over the splits.
- Label accuracy: the share of clips whose predicted label of a family is one of its true labels.

Inputs are numpy arrays; every function checks its shapes and raises one-line ValueErrors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ACTIVATIONS = ("softmax", "sigmoid")
KL_EPS = 1e-6  # added to the second distribution inside the log (audioldm_eval, audiocraft)
IS_SPLITS = 10
IS_SEED = 2020  # audioldm_eval shuffles with this seed before splitting


# ---------------------------------------------------------------------------------------------- CLAP


def cosine_scores(text: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """Row-wise cosine of paired `[N, D]` text and audio embeddings -> `[N]` (normalised here; eps 1e-8)."""
    t, a = _2d(text, "text embeddings"), _2d(audio, "audio embeddings")
    if t.shape != a.shape:
        raise ValueError(f"CLAP score needs one text per clip: text {t.shape} vs audio {a.shape}")
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-8)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
    return (t * a).sum(1)


def clap_score(text: np.ndarray, audio: np.ndarray, groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """CLAP score overall and per group (e.g. prompt index): {"mean", "std", "n", "per_clip", "per_group"}.

    The overall mean is over clips; `per_group` maps each group to the mean over its clips.
    """
    scores = cosine_scores(text, audio)
    per_group: dict[Any, float] = {}
    if groups is not None:
        if len(groups) != len(scores):
            raise ValueError(f"groups has {len(groups)} entries for {len(scores)} clips")
        for g in dict.fromkeys(groups):
            per_group[g] = float(scores[[i for i, x in enumerate(groups) if x == g]].mean())
    return {"mean": float(scores.mean()), "std": float(scores.std()), "n": int(len(scores)),
            "per_clip": scores.tolist(), "per_group": per_group}


# ---------------------------------------------------------------------------------------- probabilities


def probabilities(logits: np.ndarray, activation: str = "softmax") -> np.ndarray:
    """One clip's class probabilities `[K]` from its logits `[K]` or `[S, K]` (S windows: the activation is
    applied per window, then averaged, as audiocraft averages its segments)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"logits must be shaped [classes] or [windows, classes], got {np.shape(logits)}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or infinite values")
    if activation == "softmax":
        e = np.exp(x - x.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    else:
        p = 1.0 / (1.0 + np.exp(-x))
    return p.mean(0)


def batch_probabilities(clip_logits: Sequence[np.ndarray], activation: str = "softmax") -> np.ndarray:
    """One `[S, K]` (or `[K]`) logits array per clip -> `[N, K]` clip probabilities."""
    if len(clip_logits) == 0:
        raise ValueError("no clips to classify")
    return np.stack([probabilities(x, activation) for x in clip_logits])


# ----------------------------------------------------------------------------------------------- KL


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row KL(p || q) = sum_k p_k (log p_k - log(q_k + 1e-6)) of `[N, K]` arrays -> `[N]` (0 log 0 = 0)."""
    p, q = _2d(p, "p"), _2d(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"KL needs paired distributions of one classifier: {p.shape} vs {q.shape}")
    if (p < 0).any() or (q < 0).any():
        raise ValueError("KL needs probabilities (non-negative values)")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q + KL_EPS)), 0.0)
    return terms.sum(1)


def kl_metrics(generated_logits: Sequence[np.ndarray], reference_logits: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean KL over paired clips, both directions, both activations:
    `kl_softmax_ref_gen` = KL(reference || generated) (audioldm_eval `kl_softmax`, audiocraft `kld_pq`),
    `kl_softmax_gen_ref` = KL(generated || reference) (audiocraft `kld_qp`), and the `kl_sigmoid_*` pair."""
    if len(generated_logits) != len(reference_logits):
        raise ValueError(f"KL needs paired clips: {len(generated_logits)} generated vs {len(reference_logits)} "
                         "reference")
    out = {}
    for activation in ACTIVATIONS:
        gen = batch_probabilities(generated_logits, activation)
        ref = batch_probabilities(reference_logits, activation)
        out[f"kl_{activation}_ref_gen"] = float(kl_divergence(ref, gen).mean())
        out[f"kl_{activation}_gen_ref"] = float(kl_divergence(gen, ref).mean())
    return out


# -------------------------------------------------------------------------------------- Inception Score


def inception_score(probs: np.ndarray, *, splits: int = IS_SPLITS, seed: int = IS_SEED) -> tuple[float, float]:
    """Inception Score of clip class probabilities `[N, K]` (rows sum to 1): (mean, std) over `splits`.

    Rows are shuffled with `seed`, cut into `splits` near-equal parts; per part exp(mean_i KL(p_i || p_bar)).
    """
    p = _2d(probs, "probabilities")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} clips, got {p.shape[0]}")
    if not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("Inception Score needs softmax probabilities (rows summing to 1)")
    p = p[np.random.default_rng(seed).permutation(p.shape[0])]
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(0, keepdims=True)  # [1, K]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) - np.log(marginal)), 0.0).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------- labels


def label_accuracy(predicted: Sequence[Mapping[str, str]], truth: Sequence[Mapping[str, Sequence[str]]]
                   ) -> dict[str, dict[str, float]]:
    """Per family: {"accuracy", "n"}: share of clips whose predicted label is one of their true labels.

    `predicted[i]`: family -> label; `truth[i]`: family -> true label(s). A clip counts in a family when
    its truth has the family; a family the classifier did not predict counts as wrong. "all" pools every
    (clip, family) pair.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"label accuracy needs one prediction per clip: {len(predicted)} vs {len(truth)}")
    hits: dict[str, list[bool]] = {}
    for pred, true in zip(predicted, truth):
        for family, labels in true.items():
            labels = [labels] if isinstance(labels, str) else list(labels)
            hits.setdefault(family, []).append(pred.get(family) in labels)
    out = {family: {"accuracy": float(np.mean(h)), "n": len(h)} for family, h in hits.items()}
    pooled = [x for h in hits.values() for x in h]
    if pooled:
        out["all"] = {"accuracy": float(np.mean(pooled)), "n": len(pooled)}
    return out


def _2d(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{what} must be shaped [clips, dim] with at least one clip, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return a
