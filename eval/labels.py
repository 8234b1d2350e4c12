"""Label classifier: does a "violin" prompt give a violin? Small heads on our CLAP's audio features.

    soundsmith eval train-labels --data data/corpus --out models/labels [--clap models/clap]
    clf = LabelClassifier.from_pretrained("models/labels")
    clf.predict(wave, 16000)  # {"domain": "music", "instrument": "violin", "tempo": "fast"}

Trained on the standard corpus's labels (families from eval/clap_metrics.py: `family_of`, `candidates`,
`tempo_band`): domain (sfx / music / speech, which gates the rest), SFX class, instrument, language and
tempo bucket. SFX class and instrument are multi-label in the corpus (several sources per clip), so
their heads are trained with per-class sigmoids; the others are single-label softmax heads.

Features of a clip (`LabelFeatures`, computed once per corpus file and cached with eval/cache.py):
- our CLAP's clip embedding `[512]` and its 25 Hz frame features `[S, 256]` pooled by mean, standard
  deviation and max over time `[768]`;
- the log-mel's per-bin mean and standard deviation `[128]` (timbre, bandwidth);
- a tempo profile `[48]`: the autocorrelation of the mel spectral flux (onset strength), its largest
  value over the beat periods of each of 48 log-spaced tempo bins from 40 to 240 BPM. CLAP's pooled features keep no beat period, and no
  installed library computes a tempogram (librosa is a test-only dependency), hence the few lines here.

The heads: standardise -> Linear(F, hidden) -> ReLU -> dropout -> one Linear per family, stored as fp16
safetensors with config.json (< 1 MB). config.json records the CLAP folder and weights fingerprint it was
trained against (loading refuses another CLAP) and the measured test accuracy per family.

`logits()` concatenates the heads' logits (47 classes on the standard vocabulary): the classifier that
the harness's KL divergence and Inception Score use when the embedder has no classifier head of its own.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from soundsmith.core.paths import shipped_models
from torch import Tensor, nn

log = logging.getLogger(__name__)

MODEL_TYPE = "soundsmith-labels"
WEIGHTS_NAME = "model.safetensors"
FAMILIES = ("domain", "sfx_class", "instrument", "language", "tempo")
MULTI_LABEL = ("sfx_class", "instrument")
DOMAIN_FAMILIES = {"sfx": ("sfx_class",), "music": ("instrument", "tempo"), "speech": ("language",)}
FEATURE_VERSION = 2  # bump when LabelFeatures changes: cached features and trained heads become stale
TEMPO_RANGE = (40.0, 240.0, 48)  # BPM low, high, number of log-spaced tempi in the tempo profile
DEFAULT_CLAP = shipped_models("clap")


# -------------------------------------------------------------------------------------------- features


class LabelFeatures:
    """Clip -> feature vector `[F]` from our CLAP's audio tower (see the module docstring)."""

    def __init__(self, clap: Any, *, source: str = ""):
        from soundsmith.core.weights import weights_fingerprint
        from soundsmith.gen.clap import SoundsmithClap

        if not isinstance(clap, SoundsmithClap):
            raise ValueError(f"the label classifier runs on our CLAP's frame features; got {type(clap).__name__}")
        self.clap = clap.eval()
        self.source = source
        self.clap_fingerprint = weights_fingerprint(clap)
        cfg = clap.config
        self.dim = cfg.embed_dim + 3 * cfg.frame_dim + 2 * cfg.n_mels + TEMPO_RANGE[2]

    def describe(self) -> dict[str, Any]:
        return {"name": "soundsmith-label-features", "version": FEATURE_VERSION, "clap": self.source,
                "clap_fingerprint": self.clap_fingerprint, "dim": self.dim, "tempo_bpm": list(TEMPO_RANGE)}

    cache_namespace = "labelfeat"

    def cache_key(self) -> str:
        """Key of the cached per-clip vectors (eval/cache.py): settings and CLAP weights, not the CLAP's folder."""
        from .cache import model_key

        return model_key({k: v for k, v in self.describe().items() if k != "clap"}, self.clap_fingerprint)

    @torch.no_grad()
    def __call__(self, waves: Sequence[Any], sample_rate: int) -> np.ndarray:
        """Clips (each `[C, T]`, equal lengths batch together) -> `[N, F]` float32."""
        from soundsmith.gen.clap import prepare_audio

        out = []
        for wave in waves:
            mono = prepare_audio(wave, sample_rate, self.clap.sample_rate, self.clap.config.min_samples)  # [1, T]
            mel = self.clap.mel(mono.to(self.clap.device))  # [1, F, S] natural-log magnitude mel
            frames = self.clap.audio_tower(mel.to(self.clap.audio_projection[0].weight.dtype))  # [1, S', D']
            emb = self.clap.pool_frames(frames)  # [1, 512]
            frame_stats = torch.cat([frames.mean(1), frames.std(1, unbiased=False), frames.amax(1)], -1)
            mel_stats = torch.cat([mel.mean(-1), mel.std(-1, unbiased=False)], -1)  # [1, 2F]
            tempo = torch.from_numpy(tempo_profile(mel[0].float().cpu().numpy(), self.clap.config.mel.frame_rate))
            out.append(torch.cat([emb[0].float().cpu(), frame_stats[0].float().cpu(), mel_stats[0].float().cpu(),
                                  tempo.float()]).numpy())
        return np.stack(out).astype(np.float32)


def tempo_profile(log_mel: np.ndarray, frame_rate: float, bpm_range: tuple[float, float, int] = TEMPO_RANGE
                  ) -> np.ndarray:
    """`[F, S]` log-mel -> `[K]`: for K log-spaced tempi, the largest normalised autocorrelation of the mel
    spectral flux (onset strength) over the beat periods of that tempo's bin (a one-row tempogram; the max
    over the bin keeps a beat that falls between two tempi). Silent or too short clips give zeros."""
    low, high, k = bpm_range
    k = int(k)
    step = (high / low) ** (1 / (2 * (k - 1)))  # half a bin, as a tempo ratio
    edges = 60.0 * frame_rate / np.geomspace(low / step, high * step, k + 1)  # bin edges as lags, slow to fast
    flux = np.maximum(np.diff(log_mel, axis=1), 0.0).mean(0)  # [S-1] onset strength
    flux = flux - flux.mean()
    if flux.size < 2 * edges[0] or not np.any(flux):
        return np.zeros(k, dtype=np.float32)
    n = 1 << int(math.ceil(math.log2(2 * flux.size)))
    spectrum = np.fft.rfft(flux, n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), n)[: flux.size]
    acf = acf / (acf[0] + 1e-12) * flux.size / (flux.size - np.arange(flux.size))  # unbiased, lag 0 = 1
    return np.array([acf[int(math.floor(edges[i + 1])): int(math.ceil(edges[i])) + 1].max() for i in range(k)],
                    dtype=np.float32)


# --------------------------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class LabelClassifierConfig:
    classes: dict[str, list[str]]  # family -> class names (heads in FAMILIES order)
    feature_dim: int
    hidden: int = 256
    dropout: float = 0.3
    multi_label: tuple[str, ...] = MULTI_LABEL
    features: dict[str, Any] = field(default_factory=dict)  # LabelFeatures.describe() + the CLAP folder

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> LabelClassifierConfig:
        known = {"classes", "feature_dim", "hidden", "dropout", "multi_label", "features"}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["multi_label"] = tuple(kwargs.get("multi_label", MULTI_LABEL))
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"{where}: not a label classifier config ({err})") from None


class LabelHeads(nn.Module):
    """features `[B, F]` -> {family: logits `[B, K_family]`}: a shared hidden layer + one linear head each."""

    def __init__(self, cfg: LabelClassifierConfig):
        super().__init__()
        self.config = cfg
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))
        self.trunk = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.heads = nn.ModuleDict({f: nn.Linear(cfg.hidden, len(c)) for f, c in cfg.classes.items()})

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        x = (features - self.feature_mean) / self.feature_std  # [B, F]
        h = self.trunk(x)  # [B, H]
        return {family: head(h) for family, head in self.heads.items()}


class LabelClassifier:
    """Our CLAP's features + trained heads. `predict(wave, sr)`: family -> label for the predicted domain."""

    def __init__(self, features: LabelFeatures, heads: LabelHeads, *, folder: str = "",
                 report: dict[str, Any] | None = None):
        self.features = features
        self.heads = heads.eval()
        self.folder = folder
        self.report = report or {}

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.heads.config.classes

    @property
    def name(self) -> str:
        return f"soundsmith-labels ({self.folder})" if self.folder else "soundsmith-labels"

    def class_names(self) -> list[str]:
        """Names of the concatenated logits of `logits()`: "family:class"."""
        return [f"{f}:{c}" for f, cs in self.classes.items() for c in cs]

    def fingerprint(self) -> str:
        from soundsmith.core.weights import weights_fingerprint

        return f"{self.features.clap_fingerprint}-{weights_fingerprint(self.heads)}"

    @torch.no_grad()
    def family_logits(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, F]` features -> {family: `[N, K]` logits}."""
        out = self.heads(torch.as_tensor(np.asarray(features), dtype=torch.float32))
        return {f: v.numpy() for f, v in out.items()}

    def predict_features(self, features: np.ndarray) -> list[dict[str, str]]:
        """`[N, F]` features -> per clip {"domain": d, family: top label for each family of domain d}."""
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
        """One clip -> `[1, K_total]`: every head's logits side by side (see `class_names`)."""
        return self.logits_from_features(self.features([wave], sample_rate))

    def describe(self) -> dict[str, Any]:
        return {"name": "soundsmith-labels", "folder": self.folder, "classes": {f: len(c) for f, c in
                                                                               self.classes.items()},
                "features": self.features.describe()}

    # --------------------------------------------------------------------------------- folders

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Write config.json (with the training report) + model.safetensors (floats cast to `dtype`)."""
        from safetensors.torch import save_file
        from soundsmith.core.files import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.heads.state_dict().items()}
        tmp = folder / f".{WEIGHTS_NAME}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "model_type": MODEL_TYPE})
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / WEIGHTS_NAME)
        write_json(folder / "config.json", {**self.heads.config.to_dict(), "report": self.report})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, clap: Any = None) -> LabelClassifier:
        """Load a folder written by `save_pretrained`. `clap`: our CLAP already loaded; default: the folder
        named in config.json (relative to the classifier's folder). Another CLAP than the one the heads
        were trained on is refused (its features mean something else)."""
        from safetensors.torch import load_file
        from soundsmith.core.files import read_config
        from soundsmith.gen.clap import load_clap

        folder = Path(folder)
        data = read_config(folder)
        where = str(folder / "config.json")
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{where}: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}")
        cfg = LabelClassifierConfig.from_dict(data, where)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"label classifier weights not found: {weights}")
        clap_source = str(cfg.features.get("clap", ""))
        if clap is None:
            from soundsmith.core.paths import model_link

            # the recorded CLAP (../clap) must be in the classifier's models tree, like a pipeline's parts
            clap_dir = model_link(clap_source, folder, where=where, what="features 'clap'") if clap_source \
                else DEFAULT_CLAP
            clap = load_clap(clap_dir)
            clap_source = str(clap_dir)
        features = LabelFeatures(clap, source=clap_source)
        want = cfg.features.get("clap_fingerprint")
        if want and want != features.clap_fingerprint:
            raise ValueError(f"{where}: trained on the features of CLAP {want}, but the CLAP given "
                             f"({clap_source or 'argument'}) is {features.clap_fingerprint}; retrain it with "
                             "`soundsmith eval train-labels`")
        if cfg.feature_dim != features.dim:
            raise ValueError(f"{where}: feature_dim {cfg.feature_dim} does not match this CLAP's {features.dim}")
        heads = LabelHeads(cfg)
        state = load_file(str(weights))
        missing = sorted(set(heads.state_dict()) - set(state))
        if missing:
            raise ValueError(f"{weights}: weights do not fit config.json (missing {missing[0]!r})")
        heads.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(features, heads, folder=str(folder), report=data.get("report"))


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class LabelTrainConfig:
    hidden: int = 256
    dropout: float = 0.3
    epochs: int = 300  # full-batch steps; the best epoch on the valid split is kept
    lr: float = 3e-3
    weight_decay: float = 1e-3
    seed: int = 0


def corpus_targets(labels: dict[str, Any]) -> dict[str, list[str]]:
    """A corpus clip's labels -> family -> true labels (domain included)."""
    from .clap_metrics import family_of

    fam = {k: [str(x) for x in v] for k, v in family_of(labels).items() if k in FAMILIES and v}
    return {"domain": [str(labels.get("domain"))], **fam}


def corpus_features(data_dir: str | os.PathLike, features: Any, *,
                    cache_dir: str | os.PathLike | None = None, splits: Sequence[str] = ("train", "valid", "test"),
                    progress: bool = True) -> dict[str, tuple[np.ndarray, list[dict[str, list[str]]]]]:
    """Features and targets of the corpus clips per split, cached per (features, file content)."""
    from soundsmith.codecs.audio import read_audio
    from tqdm.auto import tqdm

    from .cache import FeatureCache, default_cache_dir, file_hash
    from .codec_report import read_split

    root = Path(data_dir)
    # any extractor with `cache_namespace` and `cache_key()`: LabelFeatures or feature_labels.HandcraftedFeatures
    cache = FeatureCache(default_cache_dir() if cache_dir is None else cache_dir, features.cache_namespace,
                         features.cache_key())
    out = {}
    for split in splits:
        rows = [r for r in read_split(root, split) if isinstance(r.get("labels"), dict) and r["labels"].get("domain")]
        if not rows:
            raise ValueError(f"{root}: no clips with corpus labels in split {split!r}")
        feats = []
        for row in tqdm(rows, desc=f"label features ({split})", disable=not progress, leave=False):
            path = root / row["file_name"]

            def compute(path: Path = path) -> np.ndarray:
                wave, sr = read_audio(path)
                return features([wave], sr)[0]

            feats.append(cache.get_or_compute(file_hash(path), compute))
        out[split] = (np.stack(feats).astype(np.float32), [corpus_targets(r["labels"]) for r in rows])
    return out


def train_label_classifier(data_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                           clap: str | os.PathLike | Any = DEFAULT_CLAP, cache_dir: str | os.PathLike | None = None,
                           config: LabelTrainConfig | None = None, progress: bool = True) -> LabelClassifier:
    """Train the heads on the corpus's train split, keep the epoch best on valid, measure test accuracy.

    Args:
        data_dir: corpus folder (metadata.jsonl with train/valid/test splits and structured labels).
        out: folder to save the classifier to (config.json + model.safetensors); None: do not save.
        clap: our CLAP folder (default: the shipped models/clap) or a loaded `SoundsmithClap`.
        cache_dir: where the per-clip features are cached (default: `eval.cache.default_cache_dir()`).
        config: training settings (`LabelTrainConfig`).
    Returns the trained classifier; its `report` holds the per-family accuracies (valid and test).
    """
    from soundsmith.gen.clap import load_clap

    from .clap_metrics import candidates

    cfg = config or LabelTrainConfig()
    t_start = time.perf_counter()
    if isinstance(clap, (str, os.PathLike)):
        # recorded relative to the output folder, so models/labels finds models/clap wherever the repo lives
        clap_source = os.path.relpath(Path(clap).resolve(), Path(out).resolve()) if out is not None else str(clap)
        clap = load_clap(clap)
    else:
        clap_source = ""
    features = LabelFeatures(clap, source=clap_source)
    data = corpus_features(data_dir, features, cache_dir=cache_dir, progress=progress)
    t_features = time.perf_counter() - t_start

    # 1. classes: the synthesizer's vocabulary plus anything seen in the corpus ----------------------------
    seen: dict[str, list[str]] = {}
    for _, targets in data.values():
        for t in targets:
            for family, labels in t.items():
                seen.setdefault(family, []).extend(labels)
    classes = {"domain": list(dict.fromkeys(["sfx", "music", "speech", *seen.get("domain", [])]))}
    for family in FAMILIES[1:]:
        classes[family] = candidates(family, list(dict.fromkeys(seen.get(family, []))))
    x_train, t_train = data["train"]
    heads_cfg = LabelClassifierConfig(classes=classes, feature_dim=features.dim, hidden=cfg.hidden,
                                      dropout=cfg.dropout, features=features.describe())
    torch.manual_seed(cfg.seed)
    heads = LabelHeads(heads_cfg)
    heads.feature_mean.copy_(torch.from_numpy(x_train.mean(0)))
    heads.feature_std.copy_(torch.from_numpy(x_train.std(0) + 1e-4))

    # 2. full-batch training, multi-task: each family's loss over the clips that have it ------------------
    x = torch.from_numpy(x_train)
    targets = {f: _target_tensor(t_train, f, classes[f]) for f in classes}
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        heads.train()
        logits = heads(x)
        loss = sum(_family_loss(logits[f], *targets[f], multi=f in MULTI_LABEL) for f in classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % 5 == 0 or epoch == cfg.epochs:
            score = _mean_accuracy(head_accuracy(heads, *data["valid"]))
            if score >= best:  # ties: the later, better-fitted epoch
                best, best_epoch = score, epoch
                best_state = {k: v.clone() for k, v in heads.state_dict().items()}
    assert best_state is not None
    heads.load_state_dict(best_state)
    heads.eval()

    # 3. report: each head given the true domain, and the gated prediction (domain first) ----------------
    clf = LabelClassifier(features, heads, folder=str(out or ""))
    report = {
        "valid_accuracy": head_accuracy(heads, *data["valid"]),
        "test_accuracy": head_accuracy(heads, *data["test"]),
        "test_accuracy_gated": _gated_accuracy(clf, *data["test"]),
        "clips": {split: len(t) for split, (_, t) in data.items()},
        "best_epoch": best_epoch, "training": asdict(cfg), "data": str(data_dir),
        "seconds": {"features": round(t_features, 1), "total": round(time.perf_counter() - t_start, 1)},
        "threads": torch.get_num_threads(),
    }
    clf.report = report
    if out is not None:
        clf.save_pretrained(out)
        clf.folder = str(out)
    return clf


def head_accuracy(heads: LabelHeads, x: np.ndarray, targets: list[dict[str, list[str]]]) -> dict[str, dict]:
    """Per family: top-1 class is one of the clip's true labels, over the clips that have the family."""
    heads.eval()
    with torch.no_grad():
        logits = heads(torch.from_numpy(x))
    out = {}
    for family, names in heads.config.classes.items():
        idx = [i for i, t in enumerate(targets) if family in t]
        if not idx:
            continue
        top = logits[family][idx].argmax(1).tolist()
        hits = [names[k] in targets[i][family] for k, i in zip(top, idx)]
        out[family] = {"accuracy": float(np.mean(hits)), "n": len(idx), "classes": len(names)}
    return out


def _gated_accuracy(clf: LabelClassifier, x: np.ndarray, targets: list[dict[str, list[str]]]) -> dict[str, dict]:
    from .metrics import label_accuracy

    return label_accuracy(clf.predict_features(x), targets)


def _mean_accuracy(acc: dict[str, dict]) -> float:
    return float(np.mean([v["accuracy"] for v in acc.values()])) if acc else 0.0


def _target_tensor(targets: list[dict[str, list[str]]], family: str, names: list[str]) -> tuple[Tensor, Tensor]:
    """(rows that have the family `[M]`, targets: multi-hot `[M, K]`)."""
    idx = [i for i, t in enumerate(targets) if family in t]
    y = torch.zeros(len(idx), len(names))
    for r, i in enumerate(idx):
        for label in targets[i][family]:
            y[r, names.index(label)] = 1.0
    return torch.tensor(idx, dtype=torch.long), y


def _family_loss(logits: Tensor, idx: Tensor, y: Tensor, *, multi: bool) -> Tensor:
    if len(idx) == 0:
        return logits.sum() * 0.0
    z = logits[idx]
    if multi:
        return F.binary_cross_entropy_with_logits(z, y)
    return F.cross_entropy(z, y.argmax(1))


def load_label_classifier(folder: str | os.PathLike | None = None) -> LabelClassifier:
    """The classifier in `folder` (default: the shipped models/labels)."""
    folder = Path(folder) if folder is not None else shipped_models("labels")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"label classifier not found: {folder} (train one with `soundsmith eval train-labels "
                                f"--data data/corpus --out {folder}`)")
    return LabelClassifier.from_pretrained(folder)


def format_label_report(report: dict[str, Any]) -> str:
    """The training report as a printable table."""
    lines = [f"label classifier: {report.get('clips')} clips, best epoch {report.get('best_epoch')}, "
             f"{report.get('seconds')} s (threads {report.get('threads')})",
             f"{'family':<12}{'classes':>8}{'valid':>8}{'test':>8}{'test n':>8}{'gated':>8}"]
    gated = report.get("test_accuracy_gated", {})
    for family, m in report.get("test_accuracy", {}).items():
        v = report.get("valid_accuracy", {}).get(family, {}).get("accuracy", float("nan"))
        g = gated.get(family, {}).get("accuracy")
        lines.append(f"{family:<12}{m['classes']:>8}{v:>8.3f}{m['accuracy']:>8.3f}{m['n']:>8}"
                     f"{'' if g is None else format(g, '>8.3f')}")
    return "\n".join(lines)
