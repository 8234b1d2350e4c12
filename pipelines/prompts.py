"""Prompt files: what to generate and, for the evaluation harness, the paired reference clip and the true labels.

`read_prompts_file` gives the prompts alone (`soundsmith generate --prompts-file`, plain text too);
`read_prompt_file` gives `PromptItem`s with references and labels (the evaluation harness).

Two structured formats, each row one prompt:

- JSONL (`benchmarks/prompts/*.jsonl`, written by `soundsmith data prompts`): an object with the text in
  "prompt", "caption" or "text"; optionally the reference clip in "file_name", "audio", "reference" or
  "path" (relative to the reference folder); the true labels as the corpus writes them ("labels": the
  metadata's labels dict) or as adherence.jsonl does ("domain" + "label").
- CSV, AudioCaps / MusicCaps style: a caption column ("caption", "prompt", "text" or "description", or
  the one named by `caption_column`); optionally a reference-audio column ("file_name", "audio",
  "audio_path", "path", "file", "filename", "wav"), else a YouTube id column ("ytid" in MusicCaps,
  "youtube_id" in AudioCaps) matched against the reference folder's file names (`<id>.wav`,
  `<id>_<start>.wav`, ...); optional "domain" + "label" columns.

A file without a caption column, or a row with an empty caption, is a one-line ValueError naming the file
(and line).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundsmith.core.vocabulary import family_of

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("caption", "prompt", "text", "description")
AUDIO_COLUMNS = ("file_name", "audio", "audio_path", "reference", "path", "file", "filename", "wav")
ID_COLUMNS = ("ytid", "youtube_id")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# adherence.jsonl's "label" of a domain -> the label family it belongs to
DOMAIN_FAMILY = {"sfx": "sfx_class", "music": "instrument", "speech": "language"}


@dataclass(frozen=True)
class PromptItem:
    """One prompt: its text, the paired reference clip (if any), its true labels (family -> labels)."""

    prompt: str
    reference: Path | None = None
    labels: dict[str, list[str]] = field(default_factory=dict)
    key: str = ""  # where it came from: "<file>:<line>"


def read_prompt_file(path: str | os.PathLike, *, reference_dir: str | os.PathLike | None = None,
                     caption_column: str | None = None, limit: int | None = None,
                     prompts_only: bool = False) -> list[PromptItem]:
    """Read a `.jsonl` or `.csv` prompt file (see the module docstring).

    Args:
        path: the file.
        reference_dir: folder that relative reference paths (and YouTube ids) are resolved in; default:
            the prompt file's folder. A reference path must lead inside it (a prompt file from someone else
            must not make the harness read elsewhere); one that does not is a one-line ValueError.
        caption_column: the caption column of a CSV (default: the first of CAPTION_COLUMNS found).
        limit: read only the first `limit` prompts (default: all).
        prompts_only: read the prompt texts only (no reference paths, no labels), for callers that
            generate without scoring.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"prompts file is a folder, not a file: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable UTF-8 text file ({' '.join(str(err).split())[:120]})") from None
    base = None if prompts_only else Path(reference_dir) if reference_dir is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = _read_jsonl(path, text, base)
    elif suffix == ".csv":
        items = _read_csv(path, text, base, caption_column)
    else:
        raise ValueError(f"{path}: prompt files must be .jsonl or .csv (AudioCaps/MusicCaps style), got '{suffix}'")
    if not items:
        raise ValueError(f"{path}: no prompts found")
    return items[:limit] if limit else items


def labels_of(row: dict[str, Any]) -> dict[str, list[str]]:
    """True labels of a prompt row, family -> labels: the corpus labels dict, or "domain" + "label"."""
    labels = row.get("labels")
    if isinstance(labels, dict) and labels.get("domain"):
        return {k: [str(v) for v in vals] for k, vals in family_of(labels).items() if vals}
    domain, label = row.get("domain"), row.get("label")
    family = row.get("family") or DOMAIN_FAMILY.get(str(domain))
    if family and isinstance(label, str) and label.strip():
        return {str(family): [label.strip()]}
    return {}


# ------------------------------------------------------------------------------------------- readers


def _read_jsonl(path: Path, text: str, base: Path | None) -> list[PromptItem]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        key = next((k for k in CAPTION_COLUMNS if row.get(k) is not None), None)
        if key is None:
            raise ValueError(f"{path}:{n}: no caption field (expected one of {', '.join(CAPTION_COLUMNS)})")
        if not isinstance(row[key], str):
            raise ValueError(f"{path}:{n}: the {key!r} field must be a string, got {type(row[key]).__name__} "
                             f"{row[key]!r:.40}")
        if not row[key].strip():
            raise ValueError(f"{path}:{n}: the {key!r} field is empty")
        if base is None:  # prompts only
            items.append(PromptItem(prompt=row[key].strip(), key=f"{path.name}:{n}"))
            continue
        _check_labels(row, f"{path}:{n}")
        ref = next((row[k] for k in AUDIO_COLUMNS if isinstance(row.get(k), str) and row[k].strip()), None)
        items.append(PromptItem(prompt=row[key].strip(), reference=_resolve(ref, base, f"{path}:{n}"),
                                labels=labels_of(row), key=f"{path.name}:{n}"))
    return items


def _read_csv(path: Path, text: str, base: Path | None, caption_column: str | None) -> list[PromptItem]:
    reader = csv.DictReader(text.splitlines())
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    if not columns:
        raise ValueError(f"{path}: empty CSV file (expected a header row with a caption column)")
    lower = {c.strip().lower(): c for c in columns}
    if caption_column is not None:
        if caption_column not in columns and caption_column.lower() not in lower:
            raise ValueError(f"{path}: no column {caption_column!r}; columns: {', '.join(columns)}")
        cap = caption_column if caption_column in columns else lower[caption_column.lower()]
    else:
        cap = next((lower[k] for k in CAPTION_COLUMNS if k in lower), None)
        if cap is None:
            raise ValueError(f"{path}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}; found "
                             f"{', '.join(columns)})")
    audio_col = id_col = None
    if base is not None:  # not prompts only
        audio_col = next((lower[k] for k in AUDIO_COLUMNS if k in lower), None)
        id_col = next((lower[k] for k in ID_COLUMNS if k in lower), None) if audio_col is None else None
    by_stem = _index_folder(base) if id_col is not None else {}
    items, unmatched = [], 0
    for n, row in enumerate(reader, 2):  # line 1 is the header
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        caption = (row.get(cap) or "").strip()
        if not caption:
            raise ValueError(f"{path}:{n}: the {cap!r} column is empty")
        reference = None
        if audio_col is not None and (row.get(audio_col) or "").strip():
            reference = _resolve(row[audio_col].strip(), base, f"{path}:{n}")
        elif id_col is not None and (row.get(id_col) or "").strip():
            reference = _match_id(row[id_col].strip(), by_stem)
            unmatched += reference is None
        labels = labels_of({k.strip().lower(): v for k, v in row.items() if k}) if base is not None else {}
        items.append(PromptItem(prompt=caption, reference=reference, labels=labels, key=f"{path.name}:{n}"))
    if unmatched:
        log.warning("%s: %d of %d rows have a %r with no matching audio file in %s (those prompts have no paired "
                    "reference)", path, unmatched, len(items), id_col, base)
    return items


def _resolve(name: str | None, base: Path | None, where: str) -> Path | None:
    """A row's reference clip, relative to (or absolute inside) the reference folder `base`."""
    from soundsmith.core.paths import resolve_inside

    if name is None or base is None:
        return None
    return resolve_inside(name, base, [base], where=where, what="reference clip")


def _check_labels(row: dict[str, Any], where: str) -> None:
    """A JSONL row's true labels must have one of the two shapes `labels_of` reads; anything else would be
    dropped without a word and the prompt scored as unlabelled."""
    labels, label = row.get("labels"), row.get("label")
    if labels is not None:
        if not isinstance(labels, dict):
            raise ValueError(f"{where}: malformed labels: 'labels' must be an object (the corpus metadata's), "
                             f"got {type(labels).__name__}")
        if not isinstance(labels.get("domain"), str) or not labels["domain"].strip():
            raise ValueError(f"{where}: malformed labels: the 'labels' object has no 'domain' string")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: malformed labels: 'label' must be a non-empty string, got {label!r:.40}")
        if not row.get("family") and str(row.get("domain")) not in DOMAIN_FAMILY:
            raise ValueError(f"{where}: malformed labels: 'label' needs a 'domain' ({', '.join(DOMAIN_FAMILY)}) "
                             f"or a 'family', got domain {row.get('domain')!r}")


def _index_folder(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()}


def _match_id(ytid: str, by_stem: dict[str, Path]) -> Path | None:
    """`<id>.wav` or a single `<id>_<start>...` / `<id>-<start>...` file (AudioCaps/MusicCaps downloads)."""
    if ytid in by_stem:
        return by_stem[ytid]
    hits = [p for stem, p in by_stem.items() if stem.startswith((f"{ytid}_", f"{ytid}-"))]
    return hits[0] if len(hits) == 1 else None


def read_prompts_file(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: `.jsonl` or `.csv` as `read_prompt_file` reads them (the text in
    a "caption", "prompt", "text" or "description" field or column), or plain text (one prompt per line;
    blank lines and lines starting with '#' are skipped). Errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"prompts file is a folder, not a file: {path}")
    if path.suffix.lower() in (".jsonl", ".csv"):
        # generation reads neither reference clips nor labels: those columns are not followed (nor checked)
        return [item.prompt for item in read_prompt_file(path, prompts_only=True)]
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable UTF-8 text file ({' '.join(str(err).split())[:120]})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts found")
    return prompts
