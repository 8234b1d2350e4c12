"""Clip sets of the evaluation harness: the audio files of a folder, read once, embedded by every extractor.

`extract` runs each extractor on each clip through its feature cache (a clip is read only when some cache
misses) and skips unreadable, non-finite and silent clips with a warning. The harness (FAD, CLAP score,
label accuracy) and the novelty index both build on it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.codecs.audio import audio_info, read_audio
from soundsmith.core.files import one_line
from soundsmith.pipelines.prompts import AUDIO_SUFFIXES

from .cache import FeatureCache, file_hash

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-4  # a clip whose absolute peak is below this (-80 dBFS) is treated as silent



@dataclass
class ClipSet:
    """The readable, non-silent clips of one folder and what was computed for them."""

    name: str  # "generated" / "reference"
    paths: list[Path] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    sample_rates: list[int] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)  # JSON sidecars ({} when none)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)  # extractor name -> per-clip array
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def list_audio(source: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Audio files of a folder (recursive, sorted) or an explicit list; one-line errors when there are none."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
        if not folder.is_dir():
            raise NotADirectoryError(f"{what} is not a folder: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{what} folder {folder} has no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return files
    files = [Path(p) for p in source]
    if not files:
        raise ValueError(f"{what} set is empty")
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} {what} files are missing, first: {missing[0]}")
    return files


Extractor = tuple[FeatureCache, Callable[[np.ndarray, int], np.ndarray]]


def extract(files: Sequence[Path], name: str, extractors: dict[str, Extractor], *, progress: bool = True
            ) -> ClipSet:
    """Run every extractor on every clip (cached); a clip is read only when some cache misses.

    Unreadable, non-finite (read_audio refuses them) and silent clips are skipped with a warning.
    """
    from tqdm.auto import tqdm

    out = ClipSet(name)
    for path in tqdm(files, desc=f"embedding {name}", unit="clip", disable=not progress, leave=False):
        try:
            content = file_hash(path)
            sample_rate = int(audio_info(path).samplerate)
        except (OSError, ValueError) as err:
            _skip(out, path, f"unreadable ({one_line(err, 160)})")
            continue
        found = {k: cache.get(content) for k, (cache, _) in extractors.items()}
        if any(v is None for v in found.values()):
            try:
                wave, sr = read_audio(path)
            except ValueError as err:
                _skip(out, path, one_line(err, 200))
                continue
            peak = float(np.abs(wave).max())
            if peak < SILENCE_PEAK:
                _skip(out, path, f"silent (peak {peak:.1e} < {SILENCE_PEAK:g})")
                continue
            for k, value in found.items():
                if value is None:
                    cache, compute = extractors[k]
                    value = np.asarray(compute(wave, sr), dtype=np.float32)
                    if not np.isfinite(value).all():
                        raise ValueError(f"{path}: the {k} model returned NaN/inf for this clip")
                    cache.put(content, value)
                    found[k] = value
        sidecar = path.with_suffix(".json")
        meta: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                loaded = json.loads(sidecar.read_text(encoding="utf-8"))
                meta = loaded if isinstance(loaded, dict) else {}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                log.warning("%s: unreadable JSON sidecar; clip scored without its prompt", sidecar)
        out.paths.append(path)
        out.hashes.append(content)
        out.sample_rates.append(sample_rate)
        out.meta.append(meta)
        for k, value in found.items():
            out.arrays.setdefault(k, []).append(value)
    if out.skipped:
        log.warning("%s: skipped %d of %d clips (%s)", name, len(out.skipped), len(files),
                    "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in out.skipped[:3]))
    if not out.paths:
        raise ValueError(f"no usable {name} clips: all {len(files)} are silent or unreadable (first: "
                         f"{out.skipped[0]['file']}: {out.skipped[0]['reason']})")
    return out


def _skip(clips: ClipSet, path: Path, reason: str) -> None:
    clips.skipped.append({"file": str(path), "set": clips.name, "reason": reason})


# --------------------------------------------------------------------------------------------- scoring


