"""Dataset readers: one torch Dataset over captioned audio in the layouts users bring.

Layouts (`layout="auto"` picks one from what it finds):
- "soundsmith": our synthetic corpus, `DIR/metadata.jsonl` (file_name, caption, domain, labels,
  duration, sample_rate, seed, split) beside `DIR/{train,valid,test}/*.wav`.
- "audiofolder": a Hugging Face `datasets` audiofolder: `metadata.jsonl` or `metadata.csv` with a
  `file_name` column, either at the top or one per split subfolder (`DIR/train/metadata.csv`).
  `datasets` itself cannot decode audio here (its Audio feature needs torchcodec, whose PyPI wheel
  does not load beside the CPU torch), so the metadata is read directly and audio decoded with soundfile.
- "csv": an AudioCaps / Clotho / MusicCaps style caption table (the CSV file is the root) plus a
  folder of audio. The audio column is an id or a file name (AudioCaps: youtube_id or audiocap_id,
  Clotho: file_name, MusicCaps: ytid); ids are matched to files by name or stem, also "Y<id>".
  Several caption columns (Clotho's caption_1..caption_5) give several captions per clip.

Each item is a dict: wave (float32 tensor [C, T]), caption, labels, path, index, length (samples
before padding). `collate` batches them for a DataLoader.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from soundsmith.codecs.audio import READ_FORMATS, audio_info, check_sample_rate, read_audio
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "soundsmith", "audiofolder", "csv")
AUDIO_EXTENSIONS = tuple(f".{f}" for f in READ_FORMATS)
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Canonical split names; the aliases the Hugging Face world uses map onto them.
SPLIT_ALIASES = {"training": "train", "validation": "valid", "val": "valid", "dev": "valid", "testing": "test"}
SPLITS = ("train", "valid", "test")
# Looked for in this order when no column is named.
CAPTION_COLUMNS = ("caption", "captions", "text", "description", "sentence")
FILE_COLUMNS = ("file_name", "filename", "file", "fname", "path", "audio", "audio_path",
                "youtube_id", "ytid", "audiocap_id", "id")
ON_MISSING = ("error", "skip", "keep")
# what to do about a missing audio file, in words a command-line user can act on (read_records(on_missing="skip")
# is the library's way, documented there)
MISSING_HINT = "restore the file or remove its row (`soundsmith data stats DATA` lists every missing file)"


@dataclass(frozen=True)
class Record:
    """One clip as the metadata describes it (nothing decoded yet)."""

    path: Path  # the audio file (may not exist when read with on_missing="keep")
    captions: tuple[str, ...]  # one or more reference captions
    labels: dict[str, Any]  # structured labels (ours) or the row's other columns
    split: str | None  # canonical split name, None if the data set has no splits
    where: str  # "line 3 of DIR/metadata.jsonl", for error messages
    meta: dict[str, Any] = field(default_factory=dict)  # the row's other top-level fields (domain, duration...)

    @property
    def domain(self) -> str | None:
        return self.labels.get("domain") or self.meta.get("domain")


def read_records(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    audio_dir: str | os.PathLike | None = None,
    file_column: str | None = None,
    caption_column: str | Sequence[str] | None = None,
    on_missing: str = "error",
) -> tuple[str, list[Record]]:
    """Read a data set's metadata. Returns (layout, records in file order, all splits).

    Args:
        root: the data set folder, or the caption CSV for the "csv" layout.
        layout: one of LAYOUTS (default "auto": detect).
        audio_dir: "csv" layout only: the folder holding the audio (default: the CSV's folder).
        file_column: the column naming each clip's audio (default: the first of FILE_COLUMNS present).
        caption_column: the caption column, or several (default: "caption", else caption_1, caption_2,
            ... , else the first of CAPTION_COLUMNS present).
        on_missing: "error" (default) raises on a missing audio file, "skip" leaves the row out with a
            warning, "keep" keeps it (stats reports it).
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    if not root.exists():
        raise FileNotFoundError(f"data set not found: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "csv":
        if not root.is_file():
            raise ValueError(f"layout 'csv' takes the caption CSV file as root, got a folder: {root}")
        audio_root = Path(audio_dir) if audio_dir is not None else root.parent
        if not audio_root.is_dir():
            raise FileNotFoundError(f"audio folder not found: {audio_root}")
        records = _read_csv_table(root, audio_root, file_column, caption_column, on_missing)
    else:
        if audio_dir is not None:
            raise ValueError(f"audio_dir only applies to the 'csv' layout (audio paths in {root} are "
                             "relative to their metadata file)")
        folder = root.parent if root.is_file() else root
        records = []
        for meta_file in _metadata_files(folder):
            records += _read_audiofolder(meta_file, folder, file_column, caption_column, on_missing)
    if not records:
        raise ValueError(f"{root}: empty data set (no clips listed)")
    return layout, records


def detect_layout(root: str | os.PathLike) -> str:
    """"csv" for a .csv file, "soundsmith" for our corpus (rows carry `labels`), else "audiofolder"."""
    root = Path(root)
    if root.is_file():
        if root.name in METADATA_FILES:
            return detect_layout(root.parent)
        if root.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{root}: unknown data set layout; give a folder with metadata.jsonl/metadata.csv "
                         "or a caption .csv file")
    files = _metadata_files(root)
    if files[0].suffix == ".jsonl":
        first = _first_jsonl_row(files[0])
        if isinstance(first.get("labels"), dict):
            return "soundsmith"
    return "audiofolder"


class AudioCaptionDataset(Dataset):
    """Fixed-length (or whole) captioned clips at a target rate and channel count.

    Args:
        root: data set folder, or the caption CSV (layouts: module docstring).
        sample_rate: output rate in Hz (default 16000); files are resampled (soxr).
        channels: 1 (mono mix-down, default) or 2 (stereo; mono files duplicated).
        crop_seconds: crop length (default None: whole clips, variable length; `collate` pads).
            Shorter clips are zero-padded at the end; `length` tells how much is real audio.
        random_crop: True (default) draws the crop start, and picks one of several captions, from a
            generator seeded by (seed, epoch, index), so workers and reruns agree. False takes the
            crop at `crop_anchor` and the first caption.
        crop_anchor: "center" (default) or "start", for random_crop=False.
        seed: base seed for the per-item generators (default 0).
        split: "train" (default), "valid", "test" (aliases such as "validation" accepted) or None for all.
            A data set without split information is used whole (logged).
        layout, audio_dir, file_column, caption_column, on_missing: see `read_records`.
        redraw_captions: draw a fresh caption from the structured labels each time
            (`soundsmith.core.captions.caption(labels, rng, style=caption_style)`); needs our corpus.
        caption_style: template set for redraw_captions: "train" (default), "heldout" or "all".
        caption_fn: custom `fn(labels, rng) -> str`, used instead of the stored captions.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        sample_rate: int = 16_000,
        channels: int = 1,
        crop_seconds: float | None = None,
        random_crop: bool = True,
        crop_anchor: str = "center",
        seed: int = 0,
        split: str | None = "train",
        layout: str = "auto",
        audio_dir: str | os.PathLike | None = None,
        file_column: str | None = None,
        caption_column: str | Sequence[str] | None = None,
        on_missing: str = "error",
        redraw_captions: bool = False,
        caption_style: str = "train",
        caption_fn: Callable[[dict, np.random.Generator], str] | None = None,
    ):
        # 1. check arguments
        self.sample_rate = check_sample_rate(sample_rate)
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels}")
        if crop_seconds is not None and not crop_seconds > 0:
            raise ValueError(f"crop_seconds must be > 0 or None (whole clips), got {crop_seconds}")
        if crop_anchor not in ("center", "start"):
            raise ValueError(f"crop_anchor must be 'center' or 'start', got {crop_anchor!r}")
        if on_missing == "keep":
            raise ValueError("on_missing='keep' is for stats only; a dataset takes 'error' or 'skip'")
        if redraw_captions and caption_fn is not None:
            raise ValueError("give either redraw_captions=True or caption_fn, not both")
        if redraw_captions and caption_style not in ("train", "heldout", "all"):
            raise ValueError(f"caption_style must be 'train', 'heldout' or 'all', got {caption_style!r}")
        self.channels = channels
        self.crop_seconds = crop_seconds
        self.random_crop = random_crop
        self.crop_anchor = crop_anchor
        self.seed = int(seed)
        self.epoch = 0
        self.caption_style = caption_style
        self.caption_fn = caption_fn
        self.redraw_captions = redraw_captions

        # 2. read the metadata and keep the split
        self.root = Path(root)
        self.layout, records = read_records(root, layout=layout, audio_dir=audio_dir, file_column=file_column,
                                            caption_column=caption_column, on_missing=on_missing)
        self.split = canonical_split(split) if split is not None else None
        self.records = select_split(records, self.split, self.root)
        if redraw_captions:
            bad = next((r for r in self.records if not r.labels.get("domain")), None)
            if bad is not None:
                raise ValueError(f"redraw_captions needs structured labels with a 'domain' (our corpus); "
                                 f"{bad.where} has none")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """New random crops and captions each epoch (still reproducible: seeded by seed, epoch, index)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        wave, length = self._load(rec.path, rng)  # [C, T]
        return {"wave": torch.from_numpy(wave), "caption": self._caption(rec, rng), "labels": rec.labels,
                "path": str(rec.path), "index": int(index), "length": length}

    def _load(self, path: Path, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        if self.crop_seconds is None:
            wave, _ = read_audio(path, sample_rate=self.sample_rate, channels=self.channels)
            return wave, wave.shape[-1]
        # Read only the crop: pick it in the file's own samples, then resample and fix the length.
        info = audio_info(path)
        file_sr, frames = info.samplerate, info.frames
        if frames <= 0:
            raise ValueError(f"{path}: not a readable audio file (no samples)")
        crop_file = math.ceil(self.crop_seconds * file_sr)
        spare = max(frames - crop_file, 0)
        if self.random_crop:
            start = int(rng.integers(spare + 1))
        else:
            start = spare // 2 if self.crop_anchor == "center" else 0
        wave, _ = read_audio(path, sample_rate=self.sample_rate, channels=self.channels,
                             offset_s=start / file_sr, duration_s=crop_file / file_sr)
        num = int(round(self.crop_seconds * self.sample_rate))
        length = min(wave.shape[-1], num)
        if wave.shape[-1] < num:
            wave = np.pad(wave, ((0, 0), (0, num - wave.shape[-1])))
        return np.ascontiguousarray(wave[:, :num], dtype=np.float32), length

    def _caption(self, rec: Record, rng: np.random.Generator) -> str:
        if self.caption_fn is not None:
            return self.caption_fn(rec.labels, rng)
        if self.redraw_captions:
            from soundsmith.core.captions import caption  # lazy: only corpora with labels need it

            return caption(rec.labels, rng, style=self.caption_style)
        if len(rec.captions) > 1 and self.random_crop:
            return rec.captions[int(rng.integers(len(rec.captions)))]
        return rec.captions[0]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: wave [B, C, T] (zero-padded to the longest), length [B], index [B], lists."""
    if not items:
        raise ValueError("collate got an empty batch")
    longest = max(it["wave"].shape[-1] for it in items)
    waves = torch.zeros(len(items), items[0]["wave"].shape[0], longest)  # [B, C, T]
    for i, it in enumerate(items):
        waves[i, :, : it["wave"].shape[-1]] = it["wave"]
    return {
        "wave": waves,
        "length": torch.tensor([it["length"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "caption": [it["caption"] for it in items],
        "labels": [it["labels"] for it in items],
        "path": [it["path"] for it in items],
    }


def canonical_split(name: str) -> str:
    """'validation' -> 'valid' etc.; other names pass through lower-cased."""
    name = str(name).strip().lower()
    return SPLIT_ALIASES.get(name, name)


def clip_tempi(root: str | os.PathLike, split: str) -> list[float | None]:
    """Each clip's BPM (`tempo_bpm` label; None where a clip has none) in the split's order: the order of
    `AudioCaptionDataset(root, split=split)` and of the latent and token caches built from it."""
    _, records = read_records(root)
    return [float(r.labels["tempo_bpm"]) if isinstance(r.labels.get("tempo_bpm"), (int, float)) else None
            for r in select_split(records, split, Path(root))]


def clip_beats(root: str | os.PathLike, split: str) -> list[list[float] | None]:
    """Each clip's beat times in seconds (`beats` label; None where a clip has fewer than two) in the split's
    order, as `clip_tempi`."""
    _, records = read_records(root)
    out: list[list[float] | None] = []
    for r in select_split(records, split, Path(root)):
        beats = r.labels.get("beats")
        ok = isinstance(beats, list) and len(beats) >= 2 and all(isinstance(t, (int, float)) for t in beats)
        out.append([float(t) for t in beats] if ok else None)
    return out


def select_split(records: list[Record], split: str | None, root: Path) -> list[Record]:
    """The records of one split (None: all). Raises a ValueError if none are left."""
    if split is None:
        return records
    if all(r.split is None for r in records):
        log.info("%s has no split information; using all %d clips for split %r", root, len(records), split)
        return records
    kept = [r for r in records if r.split == split]
    if not kept:
        found = Counter(r.split or "(none)" for r in records)
        listing = ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
        raise ValueError(f"{root}: no clips in split {split!r} (splits found: {listing})")
    return kept


# --------------------------------------------------------------------------------------- internals


def _metadata_files(folder: Path) -> list[Path]:
    """metadata.jsonl/.csv at the top, else one per split subfolder."""
    top = _metadata_in(folder)
    if top is not None:
        return [top]
    subs = [m for d in sorted(folder.iterdir()) if d.is_dir() and (m := _metadata_in(d)) is not None]
    if subs:
        return subs
    raise ValueError(f"{folder}: unknown data set layout; expected metadata.jsonl or metadata.csv in it "
                     "(or in split subfolders), or pass a caption .csv file")


def _metadata_in(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        log.warning("%s has both metadata.jsonl and metadata.csv; reading metadata.jsonl", folder)
    return found[0] if found else None


def _first_jsonl_row(path: Path) -> dict:
    for _, row in jsonl_rows(path):
        return row
    raise ValueError(f"{path}: empty data set (no clips listed)")


def jsonl_rows(path: Path):  # noqa: ANN202 (generator of (line number, row))
    """(line number, object) of each non-blank line of a JSONL file; one-line errors name the file and line.
    A byte-order mark (files saved by Windows editors) is skipped."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:  # bad bytes are found per line below
        for n, line in enumerate(f, 1):
            if _has_undecodable(line):
                raise ValueError(f"{path} line {n}: not UTF-8 text (a binary file, or another encoding)")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {n}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def _has_undecodable(line: str) -> bool:
    """Whether a line read with errors="surrogateescape" held bytes that are not UTF-8."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = [(n, row) for n, row in enumerate(reader, 2)]  # line 1 is the header
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    return columns, rows


def _caption_columns(columns: Sequence[str], wanted: str | Sequence[str] | None, source: Path) -> list[str]:
    if wanted is not None:
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(f"{source}: no caption column {missing[0]!r} (columns: {', '.join(columns)})")
        return wanted
    if "caption" in columns:
        return ["caption"]
    numbered = sorted((c for c in columns if re.fullmatch(r"caption_?\d+", c)), key=lambda c: int(re.sub(r"\D", "", c)))
    if numbered:
        return numbered  # Clotho: caption_1 ... caption_5
    for name in CAPTION_COLUMNS:
        if name in columns:
            return [name]
    raise ValueError(f"{source}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}, caption_1...; "
                     f"columns: {', '.join(columns)}); pass caption_column=")


def _captions(row: dict, cols: list[str], where: str) -> tuple[str, ...]:
    out = []
    for c in cols:
        value = row.get(c)
        if isinstance(value, list):  # a JSON list of captions
            out += [str(v).strip() for v in value if str(v).strip()]
        elif value is not None and str(value).strip():
            out.append(str(value).strip())
    if not out:
        raise ValueError(f"{where}: empty caption (column {', '.join(cols)})")
    return tuple(out)


def _split_of(row: dict, rel: str, meta_file: Path, root: Path) -> str | None:
    """From a split field, else the metadata file's subfolder, else the file path's first folder."""
    if row.get("split"):
        return canonical_split(row["split"])
    if meta_file.parent != root:
        return canonical_split(meta_file.parent.name)
    head = Path(rel).parts[0] if len(Path(rel).parts) > 1 else None
    if head is not None and canonical_split(head) in SPLITS:
        return canonical_split(head)
    return None


def _read_audiofolder(meta_file: Path, root: Path, file_column: str | None,
                      caption_column: str | Sequence[str] | None, on_missing: str) -> list[Record]:
    if meta_file.suffix == ".jsonl":
        rows = list(jsonl_rows(meta_file))
        columns = list(dict.fromkeys(k for _, row in rows for k in row))
        line = "line"
    else:
        columns, rows = _csv_rows(meta_file)
        line = "row"
    if not rows:
        return []
    file_col = file_column or "file_name"
    if file_col not in columns:
        raise ValueError(f"{meta_file}: no audio file column {file_col!r} (columns: {', '.join(columns)})")
    cap_cols = _caption_columns(columns, caption_column, meta_file)
    records, missing = [], 0
    for n, row in rows:
        where = f"{line} {n} of {meta_file}"
        rel = row.get(file_col)
        if not rel:
            raise ValueError(f"{where}: empty {file_col!r}")
        path = meta_file.parent / str(rel)
        if not path.is_file():
            if on_missing == "error":
                raise FileNotFoundError(f"audio file not found: {path} ({where}); {MISSING_HINT}")
            if on_missing == "skip":
                missing += 1
                continue
        skip = {file_col, *cap_cols}
        labels = row["labels"] if isinstance(row.get("labels"), dict) else {
            k: v for k, v in row.items() if k not in skip | {"split"}}
        if row.get("domain") and "domain" not in labels:
            labels = {"domain": row["domain"], **labels}
        meta = {k: v for k, v in row.items() if k not in skip | {"labels"}}
        records.append(Record(path=path, captions=_captions(row, cap_cols, where), labels=dict(labels),
                              split=_split_of(row, str(rel), meta_file, root), where=where, meta=meta))
    if missing:
        log.warning("%s: skipped %d rows whose audio file is missing", meta_file, missing)
    return records


def _read_csv_table(table: Path, audio_root: Path, file_column: str | None,
                    caption_column: str | Sequence[str] | None, on_missing: str) -> list[Record]:
    columns, rows = _csv_rows(table)
    if not rows:
        return []
    cap_cols = _caption_columns(columns, caption_column, table)
    index = _AudioIndex(audio_root)
    if file_column is not None:
        if file_column not in columns:
            raise ValueError(f"{table}: no audio file column {file_column!r} (columns: {', '.join(columns)})")
        file_col = file_column
    else:
        present = [c for c in FILE_COLUMNS if c in columns]
        if not present:
            raise ValueError(f"{table}: no audio file column (looked for {', '.join(FILE_COLUMNS)}; "
                             f"columns: {', '.join(columns)}); pass file_column=")
        # AudioCaps downloads name files by youtube_id or by audiocap_id: take the column that matches.
        first = rows[0][1]
        file_col = next((c for c in present if index.find(first.get(c) or "") is not None), present[0])
    records, missing = [], 0
    for n, row in rows:
        where = f"row {n} of {table}"
        key = (row.get(file_col) or "").strip()
        if not key:
            raise ValueError(f"{where}: empty {file_col!r}")
        path = index.find(key)
        if path is None:
            if on_missing == "error":
                raise FileNotFoundError(f"audio file not found: {key!r} ({where}; looked in {audio_root}); "
                                        f"{MISSING_HINT}")
            if on_missing == "skip":
                missing += 1
                continue
            path = audio_root / key
        captions = _captions(row, cap_cols, where)
        labels = {k: v for k, v in row.items() if k not in (file_col, *cap_cols, "split") and k is not None}
        if len(captions) > 1:
            labels["captions"] = list(captions)
        split = canonical_split(row["split"]) if row.get("split") else None
        records.append(Record(path=path, captions=captions, labels=labels, split=split, where=where,
                              meta={file_col: key}))
    if missing:
        log.warning("%s: skipped %d rows whose audio file is missing", table, missing)
    return records


class _AudioIndex:
    """Finds a CSV row's audio under a folder: as a relative path, by file name, by stem, or as "Y<stem>"."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_name: dict[str, Path | None] | None = None  # None value = ambiguous
        self._by_stem: dict[str, Path | None] = {}

    def find(self, key: str) -> Path | None:
        if not key:
            return None
        direct = self.folder / key
        if direct.suffix.lower() in AUDIO_EXTENSIONS and direct.is_file():
            return direct
        self._build()
        assert self._by_name is not None
        name = Path(key).name
        stem = Path(name).stem if Path(name).suffix.lower() in AUDIO_EXTENSIONS else name
        for table, k in ((self._by_name, name), (self._by_stem, stem), (self._by_stem, f"Y{stem}")):
            if k in table:
                if table[k] is None:
                    raise ValueError(f"{key!r} matches several audio files under {self.folder}; "
                                     "use relative paths in the file column")
                return table[k]
        return None

    def _build(self) -> None:
        if self._by_name is not None:
            return
        self._by_name = {}
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames.sort()
            for fn in sorted(filenames):
                if not fn.lower().endswith(AUDIO_EXTENSIONS):
                    continue
                p = Path(dirpath) / fn
                for table, k in ((self._by_name, fn), (self._by_stem, Path(fn).stem)):
                    table[k] = None if k in table else p
