"""`soundsmith data stats DIR`: what a data set holds, and whether its files are sound.

Counts clips and hours per split, per domain and per label value (instruments, styles, sfx classes,
languages, augmentation kinds, ...), then checks every file: missing, unreadable, silent
(RMS < 1e-3) or clipped (>= 0.1 % of samples at |x| >= 0.999). Reads every layout the dataset
reader knows (`train/datasets.py`).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.codecs.audio import read_audio
from soundsmith.train.datasets import Record, read_records
from tqdm import tqdm

SILENT_RMS = 1e-3
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-3
MAX_VALUES = 40  # a label with more distinct string values is only counted
MAX_VALUE_CHARS = 40  # ... and so is free text (speech "text")
MAX_EXAMPLES = 5  # problem files listed per kind
SKIP_KEYS = ("domain", "beats", "downbeats", "captions")  # counted elsewhere, or per-clip lists of times
PROBLEMS = ("missing", "unreadable", "silent", "clipped")


@dataclass
class FileCheck:
    seconds: float  # measured from the file (0 if missing or unreadable)
    problem: str | None  # one of PROBLEMS, or None
    detail: str = ""


def corpus_stats(path: str | os.PathLike, *, audio_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> str:
    """The text report for `soundsmith data stats` (`corpus_check` also counts the problems found).

    Args:
        path: data set folder (or a caption CSV; then `audio_dir` is its audio folder, default the CSV's folder).
        audio_dir: see `datasets.read_records`.
        progress: show a tqdm bar while checking files (default True).
    """
    return corpus_check(path, audio_dir=audio_dir, progress=progress)[0]


def corpus_check(path: str | os.PathLike, *, audio_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> tuple[str, Counter[str]]:
    """(the report of `corpus_stats`, files per problem kind: missing, unreadable, silent, clipped); an empty
    Counter means every file passed, which `soundsmith data stats` turns into its exit status."""
    # 1. read the metadata (keeping rows whose file is missing: that is a finding, not an error)
    layout, records = read_records(path, audio_dir=audio_dir, on_missing="keep")

    # 2. check every file and measure its duration
    checks = [_check(r) for r in tqdm(records, desc="checking files", unit="clip", disable=not progress)]
    seconds = [c.seconds if c.seconds > 0 else _listed_seconds(r) for r, c in zip(records, checks)]

    # 3. the report
    total_h = sum(seconds) / 3600
    lines = [f"data set: {path} (layout: {layout})", f"clips: {len(records)}   hours: {total_h:.3f}"]
    if seconds:
        s = np.array(seconds)
        lines.append(f"clip length: mean {s.mean():.2f} s, min {s.min():.2f} s, max {s.max():.2f} s")
    lines += _table("per split", [(r.split or "(none)", sec) for r, sec in zip(records, seconds)])
    lines += _table("per domain", [(r.domain or "(none)", sec) for r, sec in zip(records, seconds)])
    lines += _label_tables(records, seconds)
    lines += _file_report(records, checks)
    return "\n".join(lines), Counter(c.problem for c in checks if c.problem)


def _check(rec: Record) -> FileCheck:
    if not rec.path.is_file():
        return FileCheck(0.0, "missing", rec.where)
    try:
        wave, sr = read_audio(rec.path)  # [C, T]
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split()).removeprefix(f"{rec.path}: ")
        return FileCheck(0.0, "unreadable", message)
    seconds = wave.shape[-1] / sr
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < SILENT_RMS:
        return FileCheck(seconds, "silent", f"RMS {rms:.1e}")
    clipped = float(np.mean(np.abs(wave) >= CLIP_LEVEL))
    if clipped >= CLIP_FRACTION:
        return FileCheck(seconds, "clipped", f"{100 * clipped:.2f} % of samples at full scale")
    return FileCheck(seconds, None)


def _listed_seconds(rec: Record) -> float:
    """The duration the metadata claims, for files that could not be measured."""
    try:
        return float(rec.meta.get("duration") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _table(title: str, rows: list[tuple[str, float]], indent: str = "") -> list[str]:
    """A blank line, `title  clips  hours`, then one line per value, most clips first."""
    clips: Counter[str] = Counter()
    secs: defaultdict[str, float] = defaultdict(float)
    for key, sec in rows:
        clips[key] += 1
        secs[key] += sec
    width = max([len(title), *(len(k) + 2 for k in clips)])
    out = ["", f"{indent}{title:<{width}}  {'clips':>7}  {'hours':>8}"]
    for key, n in sorted(clips.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append(f"{indent}  {key:<{width - 2}}  {n:>7}  {secs[key] / 3600:>8.3f}")
    return out


def _label_tables(records: list[Record], seconds: list[float]) -> list[str]:
    """Per domain, per label key: clips and hours per value (numbers: their range)."""
    by_domain: defaultdict[str, list[tuple[dict, float]]] = defaultdict(list)
    for r, sec in zip(records, seconds):
        by_domain[r.domain or "(none)"].append((r.labels, sec))
    out: list[str] = []
    for domain in sorted(by_domain):
        values: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)
        numbers: defaultdict[str, list[float]] = defaultdict(list)
        for labels, sec in by_domain[domain]:
            for key, value in _flatten(labels):
                if isinstance(value, bool) or isinstance(value, str) or value is None:
                    values[key].append(("none" if value is None else str(value), sec))
                elif isinstance(value, int | float):
                    numbers[key].append(float(value))
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    values[key] += [(v, sec) for v in value]
        out += ["", f"labels of domain {domain} ({len(by_domain[domain])} clips)"]
        for key in sorted(values):
            distinct = {v for v, _ in values[key]}
            if len(distinct) > MAX_VALUES or max(map(len, distinct)) > MAX_VALUE_CHARS:
                out.append(f"  {key}: {len(distinct)} distinct values")
                continue
            out += _table(key, values[key], indent="  ")
        for key in sorted(numbers):
            x = np.array(numbers[key])
            out.append(f"  {key}: min {x.min():g}, median {np.median(x):g}, max {x.max():g} ({x.size} clips)")
    return out


def _flatten(labels: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """{"augmentation": {"noise": {"kind": "pink"}}} -> [("augmentation.noise.kind", "pink")]."""
    out: list[tuple[str, Any]] = []
    for key, value in labels.items():
        if not prefix and key in SKIP_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, prefix=f"{name}.") if value else [(name, None)]
        else:
            out.append((name, value))
    return out


def _file_report(records: list[Record], checks: list[FileCheck]) -> list[str]:
    found: defaultdict[str, list[str]] = defaultdict(list)
    for r, c in zip(records, checks):
        if c.problem:
            found[c.problem].append(f"{_short(r.path)}: {c.detail}" if c.detail else _short(r.path))
    why = {"missing": "file not found", "unreadable": "cannot be decoded",
           "silent": f"RMS < {SILENT_RMS:g}", "clipped": f">= {100 * CLIP_FRACTION:g} % of samples at |x| >= {CLIP_LEVEL}"}
    out = ["", f"file checks ({len(records)} files)"]
    for kind in PROBLEMS:
        out.append(f"  {kind:<11} {len(found[kind]):>6}   ({why[kind]})")
        for example in found[kind][:MAX_EXAMPLES]:
            out.append(f"      {example}")
        if len(found[kind]) > MAX_EXAMPLES:
            out.append(f"      ... and {len(found[kind]) - MAX_EXAMPLES} more")
    summary = ", ".join(f"{len(found[k])} {k}" for k in PROBLEMS if found[k])
    out += ["", f"problems: {summary}" if summary else "problems: none"]
    return out


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"
