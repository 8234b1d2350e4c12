"""Novelty of generated audio against the training set (MusicLDM, arXiv 2308.01546): for each generated
clip, the highest audio-audio cosine similarity to any training clip, and which clip that is.

    soundsmith eval index data/corpus                                   # embed the train split once
    soundsmith eval score --generated G --novelty-index data/corpus     # + a novelty section in the report

    path = build_index("data/corpus")                  # <cache>/index-corpus-train-clap-<key>/
    index = load_index(path)                            # TrainingIndex: embeddings [N, D] + clip names
    result = novelty(gen_vectors, index, threshold=0.9) # [M, D] -> distribution, plagiarism rate, per clip
    sim, file_name, caption = nearest_training_clip(wave, sr, index)   # one clip (the app)

A clip's vector is the mean of an eval embedder's window embeddings (eval/embedders.py, default "clap":
our CLAP audio tower, 2.48 s windows), L2-normalised; the per-window embeddings come from, and go to,
the harness's embedding cache (eval/cache.py, namespace "emb"), so FAD and novelty share them. MusicLDM
reports the mean of these maxima and the fraction above 0.9 ("SIM_AA@90"); the threshold here is
configurable in (0, 1], a clip counts when its similarity is >= the threshold.

An index is a folder: `embeddings.safetensors` (float32 [N, D], unit rows) and `index.json` (clip
file names, captions and domains in row order, the embedder's `describe()` and fingerprint, the data
fingerprint, the matrix's SHA-256). Its default place follows the embedding cache:
`<$SOUNDSMITH_CACHE or ~/.cache/soundsmith/eval>/index-<corpus>-<split>-<embedder>-<path key>/`, so
corpora stay read-only. `build_index` reuses an index whose data and embedder fingerprints match; the
matrix is written first and index.json (naming the matrix's hash) last, each atomically, so a killed
build leaves no index that reads as valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .cache import default_cache_dir, embedder_key, file_hash

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
MATRIX_FILE = "embeddings.safetensors"
FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 0.9  # MusicLDM's SIM_AA@90
HISTOGRAM_BINS = 40  # over [-1, 1]: bins 0.05 wide (the top one [0.95, 1]); nearest-clip similarities of
# our CLAP crowd into [0.8, 1] even for held-out corpus clips, so coarser bins would hide the distribution
BUILD_HINT = "soundsmith eval index DATA"


# ----------------------------------------------------------------------------------------- the index


@dataclass
class TrainingIndex:
    """Unit-norm clip vectors of a training split `[N, D]` and what each row is.

    `clips[i]` = {"file_name", "caption", "domain"} of row i (file names relative to `data_dir`);
    `embedder` = the embedder's `describe()`, `embedder_fingerprint` its `fingerprint()`.
    """

    embeddings: np.ndarray  # [N, D] float32, L2-normalised rows
    clips: list[dict[str, Any]]
    embedder: dict[str, Any]
    embedder_fingerprint: str
    data_dir: str = ""
    split: str = "train"
    data_fingerprint: str = ""
    metadata_sha256: str = ""  # of data_dir/metadata.jsonl when built: a cheap staleness check
    skipped: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None

    def __post_init__(self) -> None:
        assert self.embeddings.ndim == 2 and len(self.embeddings) == len(self.clips), "one row per clip"

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def embedder_name(self) -> str:
        return str(self.embedder.get("name", "unknown"))

    def summary(self) -> dict[str, Any]:
        """What a report says about the index (no per-clip lists)."""
        return {"path": None if self.path is None else str(self.path), "clips": len(self), "dim": self.dim,
                "embedder": self.embedder_name, "embedder_fingerprint": self.embedder_fingerprint,
                "data_dir": self.data_dir, "split": self.split, "data_fingerprint": self.data_fingerprint,
                "skipped": len(self.skipped)}

    def describe(self) -> str:
        """One line for the CLI: size and provenance."""
        mb = self.embeddings.nbytes / 2**20
        skipped = f", {len(self.skipped)} silent/unreadable clips left out" if self.skipped else ""
        return (f"{len(self)} clips x {self.dim} dims ({mb:.1f} MB), embedder {self.embedder_name} "
                f"({self.embedder_fingerprint}), {self.split} split of {self.data_dir}{skipped}")


def pool_clip(windows: np.ndarray) -> np.ndarray:
    """Per-window embeddings `[S, D]` -> one unit-norm clip vector `[D]` (mean over windows, L2 norm)."""
    vector = np.asarray(windows, dtype=np.float64).reshape(-1, windows.shape[-1]).mean(0)
    return (vector / max(np.linalg.norm(vector), 1e-12)).astype(np.float32)


def default_index_dir(data_dir: str | os.PathLike, *, embedder: str = "clap", split: str = "train",
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `build_index` puts the index of `data_dir`'s `split` by default: under the eval cache root
    (`cache_dir`, default `$SOUNDSMITH_CACHE` or ~/.cache/soundsmith/eval), named after the corpus folder,
    split and embedder, plus a hash of the corpus's absolute path (two corpora both called "corpus" differ)."""
    root = Path(data_dir).resolve()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name)[:40] or "data"
    key = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    base = Path(cache_dir) if cache_dir else default_cache_dir()  # "" (cache off) keeps the default place
    return base / f"index-{readable}-{split}-{re.sub(r'[^A-Za-z0-9._-]+', '_', embedder)}-{key}"


def missing_index_error(where: Path, data_dir: str | os.PathLike | None = None, embedder: str | None = None
                        ) -> FileNotFoundError:
    """The one-line error for "no index here", with the command that builds one."""
    command = BUILD_HINT if data_dir is None else f"soundsmith eval index {data_dir}"
    if embedder not in (None, "clap"):
        command += f" --embedder {embedder}"
    return FileNotFoundError(f"no training index at {where}: build it with `{command}`")


def load_index(path: str | os.PathLike) -> TrainingIndex:
    """Read an index folder written by `build_index`. One-line errors for a missing, corrupt or
    half-written index, each saying how to rebuild it."""
    from safetensors.numpy import load_file
    from soundsmith.core.files import read_json_object

    folder = Path(path)
    meta_path, matrix_path = folder / INDEX_FILE, folder / MATRIX_FILE
    if not meta_path.is_file() or not matrix_path.is_file():
        raise missing_index_error(folder)
    meta = read_json_object(meta_path)
    rebuild = f"rebuild it with `soundsmith eval index {meta.get('data_dir') or 'DATA'}`"
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: index format {meta.get('format_version')!r}, this soundsmith reads "
                         f"{FORMAT_VERSION}; {rebuild}")
    if file_hash(matrix_path) != meta.get("embeddings_sha256"):
        raise ValueError(f"{matrix_path} does not match {meta_path} (an interrupted build?); {rebuild}")
    try:
        embeddings = load_file(str(matrix_path))["embeddings"].astype(np.float32)
        clips = [{k: c.get(k) for k in ("file_name", "caption", "domain")} for c in meta["clips"]]
        index = TrainingIndex(embeddings=embeddings, clips=clips, embedder=dict(meta["embedder"]),
                              embedder_fingerprint=str(meta["embedder_fingerprint"]),
                              data_dir=str(meta.get("data_dir", "")), split=str(meta.get("split", "")),
                              data_fingerprint=str(meta.get("data_fingerprint", "")),
                              metadata_sha256=str(meta.get("metadata_sha256", "")),
                              skipped=list(meta.get("skipped", [])), path=folder)
    except (KeyError, TypeError, AttributeError, AssertionError) as err:
        raise ValueError(f"{folder}: not a soundsmith training index ({type(err).__name__}: {err}); {rebuild}") from None
    return index


def resolve_index(source: str | os.PathLike | TrainingIndex, *, embedder: str = "clap", split: str = "train",
                  cache_dir: str | os.PathLike | None = None) -> TrainingIndex:
    """An index given as a loaded `TrainingIndex`, an index folder (as `soundsmith eval index` prints), or
    a corpus folder (metadata.jsonl): then its default index for `split` and `embedder` under `cache_dir`.
    FileNotFoundError "no training index at X: build it with `soundsmith eval index DATA`" when there is none."""
    if isinstance(source, TrainingIndex):
        return source
    folder = Path(source)
    if (folder / INDEX_FILE).is_file():
        return load_index(folder)
    if (folder / "metadata.jsonl").is_file():
        where = default_index_dir(folder, embedder=embedder, split=split, cache_dir=cache_dir)
        if not (where / INDEX_FILE).is_file():
            raise missing_index_error(where, folder, embedder)
        index = load_index(where)
        _warn_if_metadata_changed(index, folder)
        return index
    raise missing_index_error(folder)


def _warn_if_metadata_changed(index: TrainingIndex, data_dir: Path) -> None:
    """A cheap staleness check (the full one, `build_index`, hashes every clip)."""
    if index.metadata_sha256 and index.metadata_sha256 != file_hash(data_dir / "metadata.jsonl"):
        log.warning("%s/metadata.jsonl changed since the index %s was built; rebuild it with "
                    "`soundsmith eval index %s`", data_dir, index.path, data_dir)


# ------------------------------------------------------------------------------------------- building


def data_fingerprint(split: str, clips: list[dict[str, Any]], hashes: list[str]) -> str:
    """Hash of a split's clips: names, captions, domains and file contents (order-free)."""
    rows = sorted(json.dumps([c["file_name"], c.get("caption"), c.get("domain"), h]) for c, h in zip(clips, hashes))
    return hashlib.sha256(json.dumps([split, rows]).encode()).hexdigest()[:24]


def build_index(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                embedder: str | Any = "clap", embedder_checkpoint: str | os.PathLike | None = None,
                split: str = "train", cache_dir: str | os.PathLike | None = None, device: str = "cpu",
                progress: bool = True) -> Path:
    """Embed every clip of a corpus split and write its novelty index; return the index folder.

    Args:
        data_dir: corpus folder (metadata.jsonl + clips; `soundsmith data synth` makes one).
        out_dir: index folder (default: `default_index_dir(data_dir, embedder=..., split=..., cache_dir=...)`).
        embedder: eval embedder name (eval/embedders.py; default "clap", our CLAP audio tower) or an
            Embedder object (anything with `embed(wave, sr) -> [S, D]`, `describe()`, `fingerprint()`).
        embedder_checkpoint: its weights (default: the shipped/standard ones).
        split: "train" (default), "valid" or "test".
        cache_dir: the per-clip embedding cache root, shared with the harness (default `$SOUNDSMITH_CACHE`
            or ~/.cache/soundsmith/eval); also the default index location.
        device: where the embedder runs (default "cpu").
        progress: show a progress bar.
    An index already there with the same data fingerprint (file names, captions, file contents) and the
    same embedder fingerprint is reused as it is; otherwise the clips are embedded (per-clip cache hits
    are not recomputed) and the index is rewritten. Silent or unreadable clips are left out with a warning.
    """
    from soundsmith.core.files import read_json_object, write_json
    from soundsmith.core.weights import save_safetensors
    from tqdm.auto import tqdm

    from .cache import FeatureCache
    from .clips import extract
    from .codec_report import read_split
    from .embedders import get_embedder

    root = Path(data_dir)
    rows = sorted(read_split(root, split), key=lambda r: str(r["file_name"]))  # errors name the folder/split
    clips = [{"file_name": str(r["file_name"]), "caption": r.get("caption"), "domain": r.get("domain")} for r in rows]
    paths = [root / c["file_name"] for c in clips]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} clips of the {split} split named in "
                                f"{root / 'metadata.jsonl'} are missing (first: {missing[0]})")
    model = get_embedder(embedder, checkpoint=embedder_checkpoint, device=device) if isinstance(embedder, str) \
        else embedder
    folder = Path(out_dir) if out_dir is not None else default_index_dir(
        root, embedder=model.name, split=split, cache_dir=cache_dir)
    hashes = [file_hash(p) for p in tqdm(paths, desc="hashing", unit="clip", disable=not progress, leave=False)]
    data_fp = data_fingerprint(split, clips, hashes)
    emb_fp = model.fingerprint()

    # 1. reuse an index of the same data and embedder ----------------------------------------------------
    meta_path = folder / INDEX_FILE
    if meta_path.is_file():
        try:
            before = read_json_object(meta_path)
            same = (before.get("data_fingerprint") == data_fp and before.get("embedder_fingerprint") == emb_fp
                    and before.get("format_version") == FORMAT_VERSION
                    and (folder / MATRIX_FILE).is_file()
                    and file_hash(folder / MATRIX_FILE) == before.get("embeddings_sha256"))
        except ValueError:
            same = False
        if same:
            log.info("%s: index of the same data and embedder; reused", folder)
            return folder
        log.info("%s: index of other data or another embedder; rebuilding", folder)

    # 2. per-window embeddings of every clip (cached per embedder and file content), pooled per clip ------
    cache = FeatureCache(None if cache_dir == "" else (cache_dir or default_cache_dir()), "emb", embedder_key(model))
    clipset = extract(paths, f"{split} split", {"embedding": (cache, model.embed)}, progress=progress)
    kept = {str(p): i for i, p in enumerate(clipset.paths)}
    rows_kept = [i for i, p in enumerate(paths) if str(p) in kept]
    matrix = np.stack([pool_clip(clipset.arrays["embedding"][kept[str(paths[i])]]) for i in rows_kept])  # [N, D]
    skipped = [{"file_name": os.path.relpath(s["file"], root), "reason": s["reason"]} for s in clipset.skipped]

    # 3. write the matrix, then the JSON that names its hash (each atomically) ---------------------------
    folder.mkdir(parents=True, exist_ok=True)
    import torch

    save_safetensors({"embeddings": torch.from_numpy(matrix)}, folder / MATRIX_FILE,
                     metadata={"format": "pt", "content": "soundsmith novelty index: unit-norm clip embeddings"})
    meta = {"format_version": FORMAT_VERSION, "data_dir": str(root.resolve()), "split": split,
            "data_fingerprint": data_fp, "metadata_sha256": file_hash(root / "metadata.jsonl"), "embedder": model.describe(),
            "embedder_fingerprint": emb_fp, "embeddings_sha256": file_hash(folder / MATRIX_FILE),
            "shape": list(matrix.shape), "pooling": "mean of the embedder's window embeddings, L2-normalised",
            "clips": [clips[i] for i in rows_kept], "skipped": skipped}
    write_json(meta_path, meta)
    log.info("%s: %d clips x %d dims (embedding cache: %d hits, %d computed)", folder, *matrix.shape,
             cache.hits, cache.misses)
    return folder


# ------------------------------------------------------------------------------------------- scoring


def check_threshold(threshold: float, name: str = "threshold") -> float:
    """A plagiarism threshold: a number in (0, 1] (one-line ValueError naming `name` otherwise)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {threshold!r}")
    return float(threshold)


def check_embedder(index: TrainingIndex, embedder: Any) -> None:
    """Refuse to compare embeddings of two different models (or of one model with other settings)."""
    fp = embedder.fingerprint()
    if fp != index.embedder_fingerprint:
        where = index.data_dir or "DATA"
        raise ValueError(f"the training index {index.path or ''} was built with embedder {index.embedder_name!r} "
                         f"(fingerprint {index.embedder_fingerprint}), not with this {embedder.name!r} ({fp}): "
                         f"rebuild it with `soundsmith eval index {where} --embedder {embedder.name}`")


def index_embedder(index: TrainingIndex, device: str = "cpu") -> Any:
    """Load the registry embedder an index was built with (its name and recorded checkpoint) and check it."""
    from .embedders import get_embedder

    model = get_embedder(index.embedder_name, checkpoint=index.embedder.get("checkpoint"), device=device)
    check_embedder(index, model)
    return model


def novelty(gen_embeddings: np.ndarray, index: TrainingIndex, *, threshold: float = DEFAULT_THRESHOLD,
            bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Nearest training clip of each generated clip, and the distribution of those similarities.

    Args:
        gen_embeddings: `[M, D]` clip vectors of the generated clips in the index's embedding
            (`pool_clip` of the same embedder's windows); rows are L2-normalised here.
        index: the training index.
        threshold: a clip whose similarity is >= this counts as a near copy; in (0, 1] (default 0.9).
        bins: histogram bins over [-1, 1] (default 40, 0.05 wide).
    Returns {"n", "threshold", "mean", "median", "p90", "min", "max", "plagiarism_rate", "above_threshold",
    "histogram": {"edges" [bins + 1], "counts" [bins]}, "per_clip": [{"similarity", "nearest_index",
    "nearest_file", "nearest_caption", "nearest_domain", "above_threshold"}] in input order}.
    """
    threshold = check_threshold(threshold)
    g = np.asarray(gen_embeddings, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"gen_embeddings must be [M, D] with M >= 1, got shape {tuple(g.shape)}")
    if g.shape[1] != index.dim:
        raise ValueError(f"gen_embeddings have {g.shape[1]} dims, the training index {index.dim} "
                         f"(embedder {index.embedder_name})")
    if not np.isfinite(g).all():
        raise ValueError("gen_embeddings hold NaN or inf")
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    # exact search as one matrix product: [M, D] x [D, N]. At our scale (a few thousand training clips,
    # a few hundred generated) this takes milliseconds; faiss's IndexFlatIP would compute the same inner
    # products with another dependency and file format. Past ~1e6 training clips an approximate faiss
    # index would be the change to make.
    sims = g @ index.embeddings.T  # [M, N]
    nearest = sims.argmax(1)  # [M]
    best = np.clip(sims[np.arange(len(g)), nearest], -1.0, 1.0).astype(np.float64)
    counts, edges = np.histogram(best, bins=bins, range=(-1.0, 1.0))
    above = best >= threshold
    per_clip = [{"similarity": float(s), "nearest_index": int(j), "nearest_file": index.clips[j]["file_name"],
                 "nearest_caption": index.clips[j].get("caption"), "nearest_domain": index.clips[j].get("domain"),
                 "above_threshold": bool(a)} for s, j, a in zip(best, nearest, above)]
    return {"n": int(len(best)), "threshold": threshold, "mean": float(best.mean()), "median": float(np.median(best)),
            "p90": float(np.percentile(best, 90)), "min": float(best.min()), "max": float(best.max()),
            "plagiarism_rate": float(above.mean()), "above_threshold": int(above.sum()),
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]},
            "per_clip": per_clip}


class Nearest(NamedTuple):
    """The training clip most similar to one clip: cosine similarity, its file name (relative to the
    corpus folder) and caption."""

    similarity: float
    file_name: str
    caption: str | None


def nearest_training_clip(wave: Any, sample_rate: int, index: TrainingIndex | str | os.PathLike,
                          embedder: Any = None) -> Nearest:
    """The training clip nearest to one clip `[C, T]` at `sample_rate` (for the app).

    Args:
        wave, sample_rate: the clip, float32 in [-1, 1].
        index: a `TrainingIndex`, an index folder or a corpus folder (`resolve_index`).
        embedder: the Embedder the index was built with, already loaded (default: loaded from the index's
            record, `index_embedder`, which costs a model load per call: pass it when calling often).
    """
    index = resolve_index(index) if not isinstance(index, TrainingIndex) else index
    if embedder is None:
        embedder = index_embedder(index)
    else:
        check_embedder(index, embedder)
    result = novelty(pool_clip(embedder.embed(wave, sample_rate))[None], index)["per_clip"][0]
    return Nearest(result["similarity"], result["nearest_file"], result["nearest_caption"])
