"""On-disk cache of per-clip embeddings and per-set statistics.

An entry is keyed by (model key, file content hash): the model key hashes the embedder's `describe()`
(name, window, hop, sample rate, ...) and its weights `fingerprint()`, the file key is the SHA-256 of the
file's bytes. A changed file therefore gets a new key and its old entry is simply never read again; a
retrained model or another window gets a new folder. Unlike caches keyed by folder name (audioldm_eval,
gudgud96), nothing can go stale.

Layout under the root (default `$SOUNDSMITH_CACHE`, else `~/.cache/soundsmith/eval`):

    <namespace>-<model key>/<hash[:2]>/<hash>.npy      per-clip arrays (float32 embeddings [S, D], logits ...)
    <namespace>-<model key>/stats/<set key>.npz       set statistics (mu, cov, n, covariance)

Writes are atomic (temp file + os.replace), so parallel processes and killed runs never leave half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .fad import Statistics

log = logging.getLogger(__name__)

CACHE_ENV = "SOUNDSMITH_CACHE"


def default_cache_dir() -> Path:
    """`$SOUNDSMITH_CACHE`, else `~/.cache/soundsmith/eval`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "soundsmith" / "eval"


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    return h.hexdigest()


def model_key(describe: dict[str, Any], fingerprint: str) -> str:
    """A short key of a model's settings and weights: one cache folder per distinct embedding."""
    text = json.dumps(describe, sort_keys=True, default=str) + "|" + str(fingerprint)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embedder_key(embedder: Any) -> str:
    """The cache key of an eval embedder's per-clip embeddings (namespace "emb"): its `describe()` without
    the checkpoint location (moving the weights keeps the cache) and its `fingerprint()`. The harness (FAD)
    and the novelty index (eval/novelty.py) both use it, so they share the cached embeddings of a clip."""
    info = {k: v for k, v in embedder.describe().items() if k != "checkpoint"}
    return model_key(info, embedder.fingerprint())


def set_key(file_hashes: Iterable[str], covariance: str) -> str:
    """Key of a set's statistics: its files' content hashes (order-free) and the covariance kind."""
    h = hashlib.sha256(covariance.encode())
    for fh in sorted(file_hashes):
        h.update(fh.encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """Per-clip arrays and per-set statistics of one model, under `root/<namespace>-<key>`.

    `root=None` disables the disk (every `get` misses, `put` does nothing), for one-off runs.
    """

    def __init__(self, root: str | os.PathLike | None, namespace: str, key: str):
        self.folder = None if root is None else Path(root) / f"{namespace}-{key}"
        self.hits = self.misses = 0

    def _path(self, content_hash: str) -> Path:
        assert self.folder is not None
        return self.folder / content_hash[:2] / f"{content_hash}.npy"

    def get(self, content_hash: str) -> np.ndarray | None:
        if self.folder is None:
            self.misses += 1
            return None
        path = self._path(content_hash)
        if path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
                self.hits += 1
                return arr
            except (OSError, ValueError) as err:  # a corrupt entry is recomputed, not fatal
                log.warning("cache entry %s unreadable (%s); recomputing", path, err)
        self.misses += 1
        return None

    def put(self, content_hash: str, array: np.ndarray) -> None:
        if self.folder is None:
            return
        path = self._path(content_hash)
        _atomic(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False), suffix=".npy")

    def get_or_compute(self, content_hash: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        arr = self.get(content_hash)
        if arr is None:
            arr = np.asarray(compute())
            self.put(content_hash, arr)
        return arr

    def get_stats(self, key: str) -> Statistics | None:
        if self.folder is None:
            return None
        path = self.folder / "stats" / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return Statistics.from_arrays(dict(data))
        except (OSError, ValueError, KeyError) as err:
            log.warning("cached statistics %s unreadable (%s); recomputing", path, err)
            return None

    def put_stats(self, key: str, stats: Statistics) -> None:
        if self.folder is None:
            return
        _atomic(self.folder / "stats" / f"{key}.npz", lambda f: np.savez(f, **stats.to_arrays()), suffix=".npz")


def _atomic(path: Path, write: Callable[[Any], None], suffix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
