"""A second label classifier, on hand-crafted audio features: adherence that does not go through our CLAP.

    soundsmith eval train-feature-labels --data data/corpus --out models/labels-features
    clf = FeatureLabelClassifier.from_pretrained("models/labels-features")
    clf.predict(wave, 16000)  # {"domain": "music", "instrument": "violin", "tempo": "fast"}

Why a second one: the CLAP-feature classifier (eval/labels.py) judges generated audio with the same CLAP
that conditioned its generation, so a model that learned to please our CLAP can score well without
sounding right. This one sees only signal statistics anyone can recompute (no learned front-end), so
where the two disagree is worth a listen.

Features of a clip (`HandcraftedFeatures`, mono 16 kHz, our 64-bin log-mel from codecs/mel.py):
- log-mel per-bin mean, standard deviation and mean absolute frame-to-frame change `[3F]` (timbre,
  bandwidth, how much and how fast each band moves: bowed vs plucked, vibrato, syllables); the last
  group raised valid accuracy of instrument from 0.958 to 0.966 and language from 0.887 to 0.935;
- MFCCs, the orthonormal DCT-II of the log-mel over its bins (first 20): mean, std and the std of their
  frame-to-frame delta `[3 * 20]` (the spectral envelope and how fast it changes: phonemes, attacks);
- spectral flatness (log), centroid, bandwidth and 85 % rolloff of the magnitude STFT, mean and std over
  the clip's non-silent frames `[8]` (tone vs noise, brightness);
- frame energy: mean and std of log RMS, share of quiet frames (speech pauses), zero-crossing rate mean
  and std `[5]`;
- onsets: the mel spectral flux's mean, std and 95th percentile, and peaks per second `[4]`;
- the tempo profile of eval/labels.py `[48]` (beat periods from 40 to 240 BPM).

Classifier: one standardisation of the features, then per family a multinomial logistic regression
(domain, language, tempo), or one sigmoid logistic regression per class for the multi-label families
(SFX class, instrument: "X while Y" clips have several), as eval/labels.py's heads. The L2 strength of
each family is chosen on the valid split. Prediction is gated by domain as in eval/labels.py.

Stored without pickle: config.json (feature settings and version, classes, scaler mean/scale, the
training report with test accuracy per family) + model.safetensors (`<family>.weight [K, D]`,
`<family>.bias [K]`, float32, 61 kB); prediction is numpy only (scikit-learn is needed for training).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from soundsmith.core.paths import shipped_models

from .labels import DOMAIN_FAMILIES, FAMILIES, MULTI_LABEL, TEMPO_RANGE, corpus_features, tempo_profile

log = logging.getLogger(__name__)

MODEL_TYPE = "soundsmith-feature-labels"
WEIGHTS_NAME = "model.safetensors"
FEATURE_VERSION = 1  # bump when HandcraftedFeatures changes: cached features and trained models become stale
N_MFCC = 20
ROLLOFF = 0.85  # share of the spectral magnitude below the rolloff frequency
SILENT_DB = 60.0  # frames this far below the loudest frame are left out of the spectral-shape statistics
QUIET_DB = 30.0  # frames this far below the clip's 95th-percentile level count as pauses
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)  # inverse L2 strengths tried per family, chosen on the valid split
ABSENT_LOGIT = -30.0  # bias of a class never seen in training: it is never predicted
DEFAULT_FOLDER = shipped_models("labels-features")


# -------------------------------------------------------------------------------------------- features


class HandcraftedFeatures:
    """Clip -> feature vector `[D]` of signal statistics (see the module docstring). No weights."""

    cache_namespace = "handfeat"

    def __init__(self, *, n_mfcc: int = N_MFCC, tempo_range: tuple[float, float, int] = TEMPO_RANGE):
        from soundsmith.codecs.mel import MelConfig, MelSpectrogram

        self.mel = MelSpectrogram(MelConfig())
        cfg = self.mel.cfg
        if not 1 <= n_mfcc <= cfg.n_mels:
            raise ValueError(f"n_mfcc must be in [1, {cfg.n_mels}], got {n_mfcc}")
        self.n_mfcc = int(n_mfcc)
        self.tempo_range = (float(tempo_range[0]), float(tempo_range[1]), int(tempo_range[2]))
        self.sample_rate = cfg.sample_rate
        self.dct = dct_matrix(self.n_mfcc, cfg.n_mels)  # [M, F]
        self.freqs_khz = np.linspace(0.0, cfg.sample_rate / 2000.0, cfg.n_fft // 2 + 1)  # [n_freqs]
        self.names = feature_names(cfg.n_mels, self.n_mfcc, self.tempo_range[2])
        self.dim = len(self.names)

    def describe(self) -> dict[str, Any]:
        return {"name": "soundsmith-handcrafted-features", "version": FEATURE_VERSION, "dim": self.dim,
                "mel": self.mel.cfg.to_dict(), "n_mfcc": self.n_mfcc, "rolloff": ROLLOFF, "silent_db": SILENT_DB,
                "quiet_db": QUIET_DB, "tempo_bpm": list(self.tempo_range)}

    def cache_key(self) -> str:
        """Key of this extractor's cached per-clip vectors (eval/cache.py): its settings; it has no weights."""
        from .cache import model_key

        return model_key(self.describe(), "no-weights")

    @torch.no_grad()
    def __call__(self, waves: Sequence[Any], sample_rate: int) -> np.ndarray:
        """Clips (each `[C, T]` or `[T]`, any lengths) -> `[N, D]` float32."""
        from soundsmith.codecs.audio import resample

        out = []
        for wave in waves:
            x = np.asarray(wave.cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
            mono = x.reshape(-1, x.shape[-1]).mean(0) if x.ndim > 1 else x  # [T]
            mono = np.asarray(resample(mono, int(sample_rate), self.sample_rate), dtype=np.float32)
            if mono.size < self.mel.cfg.n_fft:
                log.info("clip of %d samples zero-padded to %d for the feature front-end", mono.size,
                         self.mel.cfg.n_fft)
                mono = np.pad(mono, (0, self.mel.cfg.n_fft - mono.size))
            out.append(self.clip_features(mono))
        return np.stack(out).astype(np.float32)

    def clip_features(self, mono: np.ndarray) -> np.ndarray:
        """Mono 16 kHz `[T]` -> `[D]`, the groups in the order of `self.names`."""
        cfg = self.mel.cfg
        mag = self.mel.magnitude(torch.from_numpy(mono)[None])[0]  # [n_freqs, S]
        log_mel = torch.log(torch.clamp(self.mel.filterbank @ mag, min=cfg.log_floor)).numpy()  # [F, S]
        mag = mag.numpy().astype(np.float64)
        mfcc = self.dct @ log_mel  # [M, S]
        delta = (mfcc[:, 2:] - mfcc[:, :-2]) / 2 if mfcc.shape[1] > 2 else np.zeros((self.n_mfcc, 1))  # [M, S-2]
        frames = mono[: mono.size // cfg.hop_length * cfg.hop_length].reshape(-1, cfg.hop_length)  # [S', hop]
        parts = [
            log_mel.mean(1), log_mel.std(1), np.abs(np.diff(log_mel, axis=1)).mean(1),  # [F] x 3
            mfcc.mean(1), mfcc.std(1), delta.std(1),  # [M] x 3
            spectral_shape(mag, self.freqs_khz),  # [8]
            energy_stats(frames),  # [5]
            onset_stats(log_mel, cfg.frame_rate),  # [4]
            tempo_profile(log_mel, cfg.frame_rate, self.tempo_range),  # [K]
        ]
        vec = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])
        assert vec.shape == (self.dim,), (vec.shape, self.dim)
        return vec.astype(np.float32)


def feature_names(n_mels: int, n_mfcc: int, n_tempi: int) -> list[str]:
    """One name per feature, in `HandcraftedFeatures.clip_features` order (for inspection and the card)."""
    names = [f"logmel_{stat}_{i}" for stat in ("mean", "std", "absdelta") for i in range(n_mels)]
    for stat in ("mean", "std", "delta_std"):
        names += [f"mfcc_{stat}_{i}" for i in range(n_mfcc)]
    for shape in ("log_flatness", "centroid_khz", "bandwidth_khz", "rolloff_khz"):
        names += [f"{shape}_mean", f"{shape}_std"]
    names += ["log_rms_mean", "log_rms_std", "quiet_share", "zcr_mean", "zcr_std"]
    names += ["flux_mean", "flux_std", "flux_p95", "onsets_per_s"]
    names += [f"tempo_{i}" for i in range(n_tempi)]
    return names


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II `[n_out, n_in]`: log-mel `[F, S]` -> MFCC `[n_out, S]` by a matrix product."""
    n = np.arange(n_in)
    k = np.arange(n_out)[:, None]
    mat = np.sqrt(2.0 / n_in) * np.cos(np.pi / n_in * (n + 0.5) * k)
    mat[0] /= np.sqrt(2.0)
    return mat.astype(np.float32)


def spectral_shape(mag: np.ndarray, freqs_khz: np.ndarray) -> np.ndarray:
    """Magnitude STFT `[n_freqs, S]` -> `[8]`: mean and std of log flatness, centroid, bandwidth and rolloff
    (kHz) over the frames within SILENT_DB of the loudest (silent frames have no meaningful shape)."""
    power = mag ** 2  # [n_freqs, S]
    energy = power.sum(0)  # [S]
    if not np.any(energy > 0):
        return np.zeros(8)
    keep = energy >= energy.max() * 10 ** (-SILENT_DB / 10)
    mag, power = mag[:, keep], power[:, keep] + 1e-12
    flatness = np.log(power).mean(0) - np.log(power.mean(0))  # [S] log(geometric / arithmetic mean), <= 0
    weights = mag / (mag.sum(0) + 1e-12)  # [n_freqs, S]
    centroid = freqs_khz @ weights  # [S]
    bandwidth = np.sqrt(((freqs_khz[:, None] - centroid[None]) ** 2 * weights).sum(0))
    cum = np.cumsum(weights, axis=0)  # [n_freqs, S]
    rolloff = freqs_khz[np.minimum((cum < ROLLOFF).sum(0), len(freqs_khz) - 1)]
    return np.array([v for x in (flatness, centroid, bandwidth, rolloff) for v in (x.mean(), x.std())])


def energy_stats(frames: np.ndarray) -> np.ndarray:
    """Hop-sized frames `[S, hop]` -> `[5]`: mean and std of log RMS, the share of frames QUIET_DB below the
    clip's 95th-percentile level (pauses between words), zero-crossing rate mean and std."""
    if len(frames) == 0:
        return np.zeros(5)
    log_rms = 0.5 * np.log(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)  # [S] natural log
    quiet = np.mean(log_rms < np.percentile(log_rms, 95) - QUIET_DB / 20 * math.log(10))
    zcr = np.mean(np.abs(np.diff(np.signbit(frames), axis=1)), axis=1)  # [S] crossings per sample
    return np.array([log_rms.mean(), log_rms.std(), quiet, zcr.mean(), zcr.std()])


def onset_stats(log_mel: np.ndarray, frame_rate: float) -> np.ndarray:
    """Log-mel `[F, S]` -> `[4]`: the spectral flux (mean positive log-mel rise per frame, the onset strength
    tempo_profile uses): mean, std, 95th percentile and onsets per second (local maxima above mean + std)."""
    if log_mel.shape[1] < 3:
        return np.zeros(4)
    flux = np.maximum(np.diff(log_mel, axis=1), 0.0).mean(0)  # [S-1]
    inner = flux[1:-1]
    peaks = (inner > flux[:-2]) & (inner >= flux[2:]) & (inner > flux.mean() + flux.std())
    return np.array([flux.mean(), flux.std(), np.percentile(flux, 95), peaks.sum() * frame_rate / flux.size])


# ------------------------------------------------------------------------------------------ classifier


class FamilyClassifier(Protocol):
    """What adherence and the harness use of a label classifier; LabelClassifier and FeatureLabelClassifier
    both have it, so callers take either."""

    report: dict[str, Any]
    features: Callable[[Sequence[Any], int], np.ndarray]  # clips (each [C, T]), sample rate -> [N, D]

    @property
    def name(self) -> str: ...
    @property
    def classes(self) -> dict[str, list[str]]: ...
    def family_logits(self, features: np.ndarray) -> dict[str, np.ndarray]: ...  # [N, D] -> {family: [N, K]}
    def predict_features(self, features: np.ndarray) -> list[dict[str, str]]: ...
    def predict(self, wave: Any, sample_rate: int) -> dict[str, str]: ...


def family_ranks(clf: FamilyClassifier, features: np.ndarray, family: str, labels: Sequence[str]) -> list[int]:
    """1-based rank of `labels[i]` among the classes of `family` for clip i (`features [N, D]`), by the
    family's logits, whatever domain the clip is predicted to be (a prompt adheres when its class is in the
    top k). Works for both classifiers."""
    logits = clf.family_logits(features)[family]  # [N, K]
    names = clf.classes[family]
    unknown = sorted({lab for lab in labels if lab not in names})
    if unknown:
        raise ValueError(f"{family}: {', '.join(map(repr, unknown))} not among the classifier's classes")
    own = logits[np.arange(len(labels)), [names.index(lab) for lab in labels]]  # [N]
    return (1 + (logits > own[:, None]).sum(1)).tolist()


def family_top_k(clf: FamilyClassifier, features: np.ndarray, family: str, k: int = 3) -> list[list[str]]:
    """The `k` classes of `family` with the largest logits, best first, per clip (`features [N, D]`)."""
    logits = clf.family_logits(features)[family]  # [N, K]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[clf.classes[family][j] for j in row] for row in order]


def disagreement(first: Sequence[Mapping[str, str]], second: Sequence[Mapping[str, str]],
                 truth: Sequence[Mapping[str, Sequence[str] | str]]) -> dict[str, Any]:
    """Where two classifiers' gated predictions part, over the families each clip has a true label in.

    Returns "per_family": {family: n clips, `differ` (the two predict different labels; a family one of
    them did not predict, its domain being another, counts), `only_first` / `only_second` (one is right
    and the other wrong), `rate` = differ / n}; "all": {n clips, clips where some family differs, rate};
    "indices": those clips."""
    if not len(first) == len(second) == len(truth):
        raise ValueError(f"disagreement needs one prediction of each per clip: {len(first)}, {len(second)}, "
                         f"{len(truth)}")
    counts: dict[str, dict[str, int]] = {}
    indices = []
    for i, (a, b, true) in enumerate(zip(first, second, truth)):
        differs = False
        for family, labels in true.items():
            labels = [labels] if isinstance(labels, str) else list(labels)
            c = counts.setdefault(family, {"n": 0, "differ": 0, "only_first": 0, "only_second": 0})
            right_a, right_b = a.get(family) in labels, b.get(family) in labels
            c["n"] += 1
            c["differ"] += a.get(family) != b.get(family)
            c["only_first"] += right_a and not right_b
            c["only_second"] += right_b and not right_a
            differs = differs or a.get(family) != b.get(family)
        if differs:
            indices.append(i)
    return {"per_family": {f: {**c, "rate": c["differ"] / c["n"]} for f, c in counts.items()},
            "all": {"n": len(truth), "differ": len(indices), "rate": len(indices) / len(truth) if truth else 0.0},
            "indices": indices}


@dataclass(frozen=True)
class FeatureLabelModel:
    """The fitted parameters: one scaler, then per family `logits = ((x - mean) / scale) @ weight.T + bias`."""

    classes: dict[str, list[str]]  # family -> class names (FAMILIES order)
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weight: dict[str, np.ndarray]  # family -> [K, D]
    bias: dict[str, np.ndarray]  # family -> [K]
    multi_label: tuple[str, ...] = MULTI_LABEL

    def logits(self, features: np.ndarray) -> dict[str, np.ndarray]:
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale  # [N, D]
        return {f: (x @ self.weight[f].T.astype(np.float64) + self.bias[f]).astype(np.float32) for f in self.classes}


class FeatureLabelClassifier:
    """Hand-crafted features + logistic regressions. Same API as `LabelClassifier`: `predict(wave, sr)`,
    `predict_features`, `family_logits`, `logits`, `classes`, `features`, `report`."""

    def __init__(self, features: HandcraftedFeatures, model: FeatureLabelModel, *, folder: str = "",
                 report: dict[str, Any] | None = None):
        if features.dim != model.mean.shape[0]:
            raise ValueError(f"the model expects {model.mean.shape[0]} features, the extractor gives {features.dim}")
        self.features = features
        self.model = model
        self.folder = folder
        self.report = report or {}

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.model.classes

    @property
    def name(self) -> str:
        return f"{MODEL_TYPE} ({self.folder})" if self.folder else MODEL_TYPE

    def class_names(self) -> list[str]:
        """Names of the concatenated logits of `logits()`: "family:class"."""
        return [f"{f}:{c}" for f, cs in self.classes.items() for c in cs]

    def family_logits(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, D]` features -> {family: `[N, K]` logits}."""
        return self.model.logits(features)

    def predict_features(self, features: np.ndarray) -> list[dict[str, str]]:
        """`[N, D]` features -> per clip {"domain": d, family: top label for each family of domain d}."""
        # Copied from soundsmith.eval.labels.LabelClassifier.predict_features (the same gating)
        logits = self.family_logits(features)
        out = []
        for i in range(len(features)):
            domain = self.classes["domain"][int(logits["domain"][i].argmax())]
            pred = {"domain": domain}
            for family in DOMAIN_FAMILIES.get(domain, ()):
                if family in logits:
                    pred[family] = self.classes[family][int(logits[family][i].argmax())]
            out.append(pred)
        return out

    def predict(self, wave: Any, sample_rate: int) -> dict[str, str]:
        """One clip `[C, T]` -> {"domain": ..., and the top label of each family of that domain}."""
        return self.predict_features(self.features([wave], sample_rate))[0]

    def logits_from_features(self, features: np.ndarray) -> np.ndarray:
        fam = self.family_logits(features)
        return np.concatenate([fam[f] for f in self.classes], axis=1)  # [N, K_total]

    def logits(self, wave: Any, sample_rate: int) -> np.ndarray:
        """One clip -> `[1, K_total]`: every family's logits side by side (see `class_names`)."""
        return self.logits_from_features(self.features([wave], sample_rate))

    def describe(self) -> dict[str, Any]:
        return {"name": MODEL_TYPE, "folder": self.folder, "classes": {f: len(c) for f, c in self.classes.items()},
                "features": self.features.describe()}

    # --------------------------------------------------------------------------------- folders

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json (settings, classes, scaler, training report) + model.safetensors (float32)."""
        from safetensors.numpy import save_file
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for family in self.classes:
            tensors[f"{family}.weight"] = np.ascontiguousarray(self.model.weight[family], dtype=np.float32)
            tensors[f"{family}.bias"] = np.ascontiguousarray(self.model.bias[family], dtype=np.float32)
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "np", "model_type": MODEL_TYPE})
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / WEIGHTS_NAME)
        write_json(folder / "config.json", {
            "model_type": MODEL_TYPE, "classes": self.classes, "multi_label": list(self.model.multi_label),
            "features": {**self.features.describe(), "names": self.features.names},
            "scaler": {"mean": self.model.mean.tolist(), "scale": self.model.scale.tolist()},
            "report": self.report})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> FeatureLabelClassifier:
        """Load a folder written by `save_pretrained`; features of another version are refused."""
        from safetensors.numpy import load_file
        from soundsmith.core.files import read_config

        folder = Path(folder)
        data = read_config(folder)
        where = str(folder / "config.json")
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{where}: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}")
        try:
            feat_cfg, classes = data["features"], {f: list(c) for f, c in data["classes"].items()}
            mean = np.asarray(data["scaler"]["mean"], dtype=np.float64)
            scale = np.asarray(data["scaler"]["scale"], dtype=np.float64)
            features = HandcraftedFeatures(n_mfcc=int(feat_cfg["n_mfcc"]), tempo_range=tuple(feat_cfg["tempo_bpm"]))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{where}: not a feature label classifier config (missing {err})") from None
        if feat_cfg.get("version") != FEATURE_VERSION:
            raise ValueError(f"{where}: trained on features version {feat_cfg.get('version')}, this soundsmith "
                             f"computes version {FEATURE_VERSION}; retrain it with `soundsmith eval "
                             "train-feature-labels`")
        if mean.shape != (features.dim,) or scale.shape != (features.dim,):
            raise ValueError(f"{where}: scaler has {mean.shape[0]} features, the extractor gives {features.dim}")
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"feature label classifier weights not found: {weights}")
        state = load_file(str(weights))
        weight, bias = {}, {}
        for family, names in classes.items():
            w, b = state.get(f"{family}.weight"), state.get(f"{family}.bias")
            if w is None or b is None or w.shape != (len(names), features.dim) or b.shape != (len(names),):
                raise ValueError(f"{weights}: weights of {family!r} missing or not [{len(names)}, {features.dim}]")
            weight[family], bias[family] = w.astype(np.float32), b.astype(np.float64)
        model = FeatureLabelModel(classes=classes, mean=mean, scale=scale, weight=weight, bias=bias,
                                  multi_label=tuple(data.get("multi_label", MULTI_LABEL)))
        return cls(features, model, folder=str(folder), report=data.get("report"))


def load_feature_label_classifier(folder: str | os.PathLike | None = None) -> FeatureLabelClassifier:
    """The classifier in `folder` (default: the shipped models/labels-features)."""
    folder = Path(folder) if folder is not None else DEFAULT_FOLDER
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"feature label classifier not found: {folder} (train one with `soundsmith eval "
                                f"train-feature-labels --data data/corpus --out {folder}`)")
    return FeatureLabelClassifier.from_pretrained(folder)


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class FeatureTrainConfig:
    c_grid: tuple[float, ...] = C_GRID  # inverse L2 strengths; each family keeps the best on the valid split
    max_iter: int = 3000  # L-BFGS iterations per fit


def train_feature_label_classifier(data_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                                   cache_dir: str | os.PathLike | None = None,
                                   config: FeatureTrainConfig | None = None,
                                   progress: bool = True) -> FeatureLabelClassifier:
    """Fit on the corpus's train split, choose each family's L2 strength on valid, measure on test.

    Args:
        data_dir: corpus folder (metadata.jsonl with train/valid/test splits and structured labels).
        out: folder to save the classifier to (config.json + model.safetensors); None: do not save.
        cache_dir: where the per-clip features are cached (default: `eval.cache.default_cache_dir()`).
        config: training settings (`FeatureTrainConfig`).
        progress: tqdm bars over the clips of each split.
    Returns the trained classifier; its `report` holds the per-family accuracies (valid and test).
    """
    from sklearn.preprocessing import StandardScaler

    from .clap_metrics import candidates

    cfg = config or FeatureTrainConfig()
    if not cfg.c_grid or any(c <= 0 for c in cfg.c_grid):
        raise ValueError(f"c_grid must be positive inverse regularisation strengths, got {cfg.c_grid}")
    t_start = time.perf_counter()
    features = HandcraftedFeatures()
    data = corpus_features(data_dir, features, cache_dir=cache_dir, progress=progress)
    t_features = time.perf_counter() - t_start

    # 1. classes: the synthesizer's vocabulary plus anything seen in the corpus ----------------------------
    # Copied from soundsmith.eval.labels.train_label_classifier (the same class lists, so both agree)
    seen: dict[str, list[str]] = {}
    for _, targets in data.values():
        for t in targets:
            for family, labels in t.items():
                seen.setdefault(family, []).extend(labels)
    classes = {"domain": list(dict.fromkeys(["sfx", "music", "speech", *seen.get("domain", [])]))}
    for family in FAMILIES[1:]:
        classes[family] = candidates(family, list(dict.fromkeys(seen.get(family, []))))

    # 2. one scaler over the train split, then per family the best L2 strength on valid ------------------
    x_train, t_train = data["train"]
    scaler = StandardScaler().fit(x_train)
    scaled = {split: scaler.transform(x) for split, (x, _) in data.items()}  # [N, D] each
    weight, bias, chosen = {}, {}, {}
    for family, names in classes.items():
        rows, y = _family_rows(t_train, family, names)
        best = None
        for c in cfg.c_grid:
            w, b = _fit_family(scaled["train"][rows], y, multi=family in MULTI_LABEL, c=c, max_iter=cfg.max_iter)
            score = _top1(scaled["valid"], data["valid"][1], family, names, w, b)
            if best is None or score > best[0]:  # ties: the stronger regularisation (earlier in the grid)
                best = (score, c, w, b)
        assert best is not None
        _, chosen[family], weight[family], bias[family] = best
    model = FeatureLabelModel(classes=classes, mean=scaler.mean_.astype(np.float64),
                              scale=scaler.scale_.astype(np.float64), weight=weight, bias=bias)
    clf = FeatureLabelClassifier(features, model, folder=str(out or ""))

    # 3. report: each family given the true domain, top-3, and the gated prediction (domain first) ---------
    from .metrics import label_accuracy

    clf.report = {
        "valid_accuracy": family_accuracy(clf, *data["valid"]),
        "test_accuracy": family_accuracy(clf, *data["test"]),
        "test_top3_accuracy": family_accuracy(clf, *data["test"], k=3),
        "test_accuracy_gated": label_accuracy(clf.predict_features(data["test"][0]), data["test"][1]),
        "clips": {split: len(t) for split, (_, t) in data.items()},
        "c_chosen": chosen, "training": {**asdict(cfg), "c_grid": list(cfg.c_grid)}, "data": str(data_dir),
        "seconds": {"features": round(t_features, 1), "total": round(time.perf_counter() - t_start, 1)},
        "threads": torch.get_num_threads(),
    }
    if out is not None:
        clf.save_pretrained(out)
    return clf


def family_accuracy(clf: FamilyClassifier, x: np.ndarray, targets: list[dict[str, list[str]]], *, k: int = 1
                    ) -> dict[str, dict]:
    """Per family: one of the top `k` classes is a true label of the clip, over the clips that have the
    family (the true domain given: no gating)."""
    out = {}
    for family, names in clf.classes.items():
        idx = [i for i, t in enumerate(targets) if family in t]
        if not idx:
            continue
        top = family_top_k(clf, x[idx], family, k)
        hits = [any(lab in targets[i][family] for lab in labs) for labs, i in zip(top, idx)]
        out[family] = {"accuracy": float(np.mean(hits)), "n": len(idx), "classes": len(names)}
    return out


def _family_rows(targets: list[dict[str, list[str]]], family: str, names: list[str]) -> tuple[list[int], np.ndarray]:
    """(clips that have the family, their multi-hot targets `[M, K]`)."""
    idx = [i for i, t in enumerate(targets) if family in t]
    y = np.zeros((len(idx), len(names)), dtype=np.int64)
    for r, i in enumerate(idx):
        for label in targets[i][family]:
            y[r, names.index(label)] = 1
    return idx, y


def _fit_family(x: np.ndarray, y: np.ndarray, *, multi: bool, c: float, max_iter: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features `[M, D]`, multi-hot targets `[M, K]` -> (weight `[K, D]`, bias `[K]`).

    multi: one binary (sigmoid) regression per class; else one softmax regression over the classes seen.
    A class without training clips gets weight 0 and bias ABSENT_LOGIT (never predicted); with a single
    class seen, that class always wins."""
    from sklearn.linear_model import LogisticRegression

    k, d = y.shape[1], x.shape[1]
    weight, bias = np.zeros((k, d)), np.full(k, ABSENT_LOGIT)
    if multi:
        for j in range(k):
            if 0 < y[:, j].sum() < len(y):
                fit = LogisticRegression(C=c, max_iter=max_iter).fit(x, y[:, j])
                weight[j], bias[j] = fit.coef_[0], fit.intercept_[0]
            elif y[:, j].all():
                bias[j] = -ABSENT_LOGIT
        return weight, bias
    labels = y.argmax(1)  # [M] single-label families: the one true class
    present = np.unique(labels)
    if len(present) == 1:
        bias[present[0]] = 0.0
        return weight, bias
    fit = LogisticRegression(C=c, max_iter=max_iter).fit(x, labels)
    if len(present) == 2:  # binary: sigmoid(w x + b) = softmax over the logits (0, w x + b)
        weight[present[1]], bias[present[1]] = fit.coef_[0], fit.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weight[fit.classes_], bias[fit.classes_] = fit.coef_, fit.intercept_
    return weight, bias


def _top1(x: np.ndarray, targets: list[dict[str, list[str]]], family: str, names: list[str], w: np.ndarray,
          b: np.ndarray) -> float:
    """Top-1 accuracy of one family's (weight, bias) on standardised features (clips that have the family)."""
    idx = [i for i, t in enumerate(targets) if family in t]
    if not idx:
        return 0.0
    top = (x[idx] @ w.T + b).argmax(1)  # [M]
    return float(np.mean([names[j] in targets[i][family] for j, i in zip(top, idx)]))


def format_feature_label_report(report: dict[str, Any]) -> str:
    """The training report as a printable table."""
    lines = [f"feature label classifier: {report.get('clips')} clips, {report.get('seconds')} s "
             f"(threads {report.get('threads')})",
             f"{'family':<12}{'classes':>8}{'C':>7}{'valid':>8}{'test':>8}{'top-3':>8}{'test n':>8}{'gated':>8}"]
    gated, top3 = report.get("test_accuracy_gated", {}), report.get("test_top3_accuracy", {})
    for family, m in report.get("test_accuracy", {}).items():
        v = report.get("valid_accuracy", {}).get(family, {}).get("accuracy", float("nan"))
        t3 = top3.get(family, {}).get("accuracy", float("nan"))
        g = gated.get(family, {}).get("accuracy")
        lines.append(f"{family:<12}{m['classes']:>8}{report.get('c_chosen', {}).get(family, float('nan')):>7g}"
                     f"{v:>8.3f}{m['accuracy']:>8.3f}{t3:>8.3f}{m['n']:>8}{'' if g is None else format(g, '>8.3f')}")
    if "all" in gated:
        lines.append(f"{'all':<12}{'':>8}{'':>7}{'':>8}{'':>8}{'':>8}{gated['all']['n']:>8}"
                     f"{gated['all']['accuracy']:>8.3f}")
    return "\n".join(lines)
