"""`soundsmith data import SRC --out DIR`: a folder of your own sounds -> the corpus layout the trainers read.

    report = import_folder("my_sounds", "data/my_sounds")            # captions from metadata.csv/.jsonl or names
    print(report)                                                    # what was done, in a few lines

What it reads:
- audio: every .wav / .flac / .ogg under SRC, recursively (hidden files and folders, and macOS's
  __MACOSX, left out; other audio formats are counted as skipped);
- captions: a CSV or JSONL table (`captions=`, else SRC/metadata.jsonl, else SRC/metadata.csv) with a file
  column (the first of pipelines/prompts.py's AUDIO_COLUMNS present, plus "fname"; else a YouTube id
  column, matched to file stems) and a caption column (the first of its CAPTION_COLUMNS, plus "captions",
  "sentence", "caption_1"), names case-insensitive. A row's file is a path relative to SRC, else a unique
  file name or stem under SRC. Audio files the table does not list are skipped (and counted).
  Without a table, each caption is made from the file's folder and file names (`caption_from_name`:
  "dogs/dog_bark_03.wav" -> "dog bark"), as WavCaps/AudioSetCaps derive captions from metadata.
- `label_captions=`: a label classifier folder (eval/labels.py, e.g. models/labels); its top class for each
  file ("dog barking", "violin", "German speech") is appended to the name-derived caption.

What it writes (an audiofolder every reader of train/datasets.py and eval/ accepts):

    DIR/{train,valid}/NNNNNN.wav   16-bit PCM mono at `sample_rate` (default 16 kHz), `clip_seconds` long
    DIR/metadata.jsonl             file_name, caption, split, labels, duration, sample_rate, index
    DIR/import.json                the arguments, the counts and the printed summary

Each file is mixed down to mono and resampled (soxr). One shorter than a clip is looped (10 ms crossfade at
the seam); a longer one is split into consecutive clips, at most `max_clips_per_file` (default 12: one
minute at 5 s) so one long recording does not outweigh the rest; what is left after the last whole clip is
dropped (a 12 s file gives 2 clips of 5 s). Clips quieter than RMS 1e-3 are left out; peaks above 0.99
(after resampling) are scaled down to 0.99, other levels are kept.

The split is per source file, so the clips of one recording never straddle train and valid: a file is in
valid when a hash of its path relative to SRC falls in the lowest `valid_share` (default 10 %); if none
of the files kept (silent ones are not) does, the one with the lowest hash is (the trainers validate on
the valid split). A file's split depends on its path alone, save that fallback. No test split: with a
few dozen sounds every one is worth training on (the eval commands' default `--split test` finds none).

At least `min_files` (default 8) usable files: the split holds out whole files, so 8 keep at least one for
validation and seven to learn from; fewer sounds than that teach a model little beyond copying them.

Errors are one line and leave nothing behind: the import is written into a temporary folder beside `out`
and renamed at the end. An existing `out` must be empty, or an earlier import (it holds import.json),
which is then replaced whole.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from soundsmith.codecs.audio import READ_FORMATS, audio_info, read_audio, resample, write_audio
from soundsmith.core.checks import check_float, check_int
from soundsmith.core.files import write_json, write_text_atomic
from soundsmith.core.run_lock import check_output_dir_arg
from soundsmith.core.vocabulary import LANGUAGES
from soundsmith.pipelines.prompts import AUDIO_COLUMNS, CAPTION_COLUMNS, ID_COLUMNS
from soundsmith.train.datasets import jsonl_rows

IMPORT_FILE = "import.json"
IMPORT_FORMAT = 1
STAGING = ".clips"  # clips wait here, in the temporary folder, until the kept files get their splits
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # looked for in SRC in this order
AUDIO_SUFFIXES = tuple(f".{f}" for f in READ_FORMATS)
OTHER_AUDIO_SUFFIXES = (".mp3", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".opus", ".mp4", ".webm", ".amr")
TABLE_CAPTION_COLUMNS = (*CAPTION_COLUMNS, "captions", "sentence", "caption_1")
TABLE_FILE_COLUMNS = (*AUDIO_COLUMNS, "fname")
CLIP_SECONDS = (0.5, 60.0)  # as `data synth`
SAMPLE_RATES = (8000, 48000)
MIN_FILES = 8
VALID_SHARE = 0.1
MAX_CLIPS_PER_FILE = 12
SILENT_RMS = 1e-3  # as `data stats`: quieter clips are left out
MAX_PEAK = 0.99
LOOP_FADE_S = 0.01
SKIP_FOLDERS = ("__MACOSX",)
# words a file or folder name carries that say nothing about the sound: takes, versions, formats, containers
GENERIC_WORDS = frozenset("""
    take takes tk ver version rev copy final edit edited new untitled mono stereo
    wav wave flac ogg mp aif aiff khz hz kbps bit bits
    audio sound sounds sample samples clip clips file files rec recording recordings data raw misc sfx fx
    track trk part pt no nr num var alt
    train training valid validation val test testing dev eval
""".split())


@dataclass
class Source:
    """One audio file to import."""

    path: Path
    rel: str  # POSIX path relative to SRC: the split hash and the row's labels use it
    caption: str
    where: str  # where the caption came from: "row 3 of SRC/metadata.csv", or "name"
    info: Any = None  # soundfile header (samplerate, channels, frames)


@dataclass
class ImportReport:
    """What an `import_folder` call did; `str()` is the summary the CLI prints."""

    src: Path
    out: Path
    sample_rate: int
    clip_seconds: float
    caption_source: str  # "metadata.csv", "file and folder names", ...
    files: int = 0  # files imported
    clips: int = 0
    splits: Counter = field(default_factory=Counter)  # clips per split
    split_files: Counter = field(default_factory=Counter)  # files per split
    resampled: Counter = field(default_factory=Counter)  # source rate -> files
    mixed_down: Counter = field(default_factory=Counter)  # source channels -> files
    looped: int = 0
    cropped: int = 0  # longer files: the rest after the last whole clip dropped
    split_up: int = 0  # files giving more than one clip
    capped: int = 0  # files longer than max_clips_per_file clips
    attenuated: int = 0  # clips whose peak was scaled down to MAX_PEAK
    silent_clips: int = 0
    labelled: int = 0  # captions with the classifier's label appended
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> files (relative to SRC)
    wall_s: float = 0.0

    def skip(self, reason: str, rel: str) -> None:
        self.skipped.setdefault(reason, []).append(rel)

    def __str__(self) -> str:
        splits = ", ".join(f"{s} {self.splits[s]} ({_n(self.split_files[s], 'file')})" for s in ("train", "valid"))
        lines = [f"{self.out}: imported {_n(self.files, 'file')} from {self.src} as {_n(self.clips, 'clip')} of "
                 f"{self.clip_seconds:g} s at {self.sample_rate} Hz mono ({splits}); captions from "
                 f"{self.caption_source}" + (f" ({_n(self.labelled, 'file')} with the classifier's label appended)"
                                             if self.labelled else "") + f"; {self.wall_s:.1f} s"]
        done = []
        if self.resampled:
            rates = ", ".join(f"{n} from {sr} Hz" for sr, n in sorted(self.resampled.items()))
            done.append(f"resampled {_n(sum(self.resampled.values()), 'file')} ({rates})")
        if self.mixed_down:
            chans = ", ".join(f"{n} of {c} channels" for c, n in sorted(self.mixed_down.items()))
            done.append(f"mixed down {_n(sum(self.mixed_down.values()), 'file')} to mono ({chans})")
        if self.looped:
            done.append(f"looped {_n(self.looped, 'file')} shorter than {self.clip_seconds:g} s")
        if self.cropped:
            done.append(f"cropped {_n(self.cropped, 'longer file')} to whole clips ({self.split_up} split into several"
                        + (f", {self.capped} cut at the clip limit" if self.capped else "") + ")")
        if self.attenuated:
            done.append(f"scaled down {_n(self.attenuated, 'clip')} peaking above {MAX_PEAK}")
        if self.silent_clips:
            done.append(f"left out {_n(self.silent_clips, 'silent clip')}")
        lines += [f"  {d}" for d in done] or ["  nothing to convert: every file was already a mono clip at this rate"]
        for reason, files in self.skipped.items():
            shown = ", ".join(files[:3]) + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")
            lines.append(f"  skipped {_n(len(files), 'file')} ({reason}): {shown}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ public API


def import_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    captions: str | os.PathLike | None = None,
    sample_rate: int = 16000,
    clip_seconds: float = 5.0,
    max_clips_per_file: int = MAX_CLIPS_PER_FILE,
    label_captions: Any = None,
    valid_share: float = VALID_SHARE,
    min_files: int = MIN_FILES,
    progress: bool = True,
) -> ImportReport:
    """Import the audio under `src` into the corpus folder `out` (module docstring: what and how).

    Args:
        src: the folder of audio files (searched recursively).
        out: the corpus folder to write; must be missing, empty, or an earlier import (replaced).
        captions: a CSV/JSONL caption table (default: SRC/metadata.jsonl or SRC/metadata.csv when present,
            else captions from the file and folder names).
        sample_rate: the corpus rate, 8000-48000 Hz (default 16000).
        clip_seconds: the training window, 0.5-60 s (default 5, what the trainers expect).
        max_clips_per_file: clips taken from one long file at most (default 12).
        label_captions: a label classifier folder (eval/labels.py), or a loaded classifier (anything with
            `predict(wave [C, T], sample_rate) -> {"domain": ..., family: label}`): append its top class
            to each name-derived caption. Not with a caption table.
        valid_share: share of files held out for validation, (0, 0.5] (default 0.1).
        min_files: fewest usable audio files accepted (default 8).
        progress: a tqdm bar over the files.

    Raises one-line errors, with nothing written: FileNotFoundError (SRC, the table, a file a row names),
    ValueError (too few files, an unreadable file, a table without a caption or file column, a file
    without a usable caption, an `out` that is neither empty nor an earlier import).
    """
    t0 = time.perf_counter()
    # 1. arguments and folders (nothing is read yet)
    sample_rate = check_int("sample_rate", sample_rate, *SAMPLE_RATES)
    clip_seconds = check_float("clip_seconds", clip_seconds, *CLIP_SECONDS)
    max_clips_per_file = check_int("max_clips_per_file", max_clips_per_file, 1)
    valid_share = check_float("valid_share", valid_share, 0.0, 0.5, low_open=True)
    min_files = check_int("min_files", min_files, 2)
    src, out = Path(src), check_output_dir_arg(out)
    if not src.exists():
        raise FileNotFoundError(f"source folder not found: {src}")
    if not src.is_dir():
        raise NotADirectoryError(f"source is not a folder: {src} (give the folder that holds the audio files)")
    _check_out(src, out)

    # 2. the audio files and their captions
    report = ImportReport(src=src, out=out, sample_rate=sample_rate, clip_seconds=clip_seconds, caption_source="")
    files = _scan(src, report)
    table = _caption_table(src, captions)
    if table is not None:
        if label_captions is not None:
            raise ValueError(f"--label-captions appends a label to captions made from file names, but the captions "
                             f"come from {table}; leave out one of the two")
        sources = _table_sources(table, src, files, report)
        report.caption_source = str(table)
    else:
        sources = _name_sources(src, files)
        report.caption_source = "file and folder names"

    # 3. headers: an unreadable file is named before any work; then the size and the split
    for s in sources:
        s.info = audio_info(s.path)
        if s.info.frames <= 0 or s.info.channels <= 0:
            raise ValueError(f"{s.path}: not a readable audio file (no samples)")
    _check_count(src, len(sources), min_files, report)
    labeler = _load_labeler(label_captions)

    # 4. convert into a temporary folder beside `out`; rename it into place at the end
    target = Path(os.path.abspath(out))  # a name to put beside, also for `--out .`
    made = _make_parents(target.parent)
    tmp = _new_folder(target.parent, f".{target.name}.import-")
    try:
        rows = _convert(sources, tmp, report, sample_rate=sample_rate, clip_seconds=clip_seconds,
                        max_clips_per_file=max_clips_per_file, labeler=labeler, progress=progress)
        _check_count(src, report.files, min_files, report, after="leaving out silent files")
        _place_in_splits(rows, tmp, report, valid_share)  # over the files kept (a silent one may have gone)
        write_text_atomic(tmp / "metadata.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        report.wall_s = time.perf_counter() - t0
        write_json(tmp / IMPORT_FILE, {
            "format": IMPORT_FORMAT, "source": str(src.resolve()),
            "captions": str(Path(report.caption_source).resolve()) if table is not None else None,
            "label_captions": _describe_labeler(label_captions, labeler),
            "sample_rate": sample_rate, "clip_seconds": clip_seconds, "max_clips_per_file": max_clips_per_file,
            "valid_share": valid_share, "files": report.files, "clips": report.clips,
            "splits": dict(report.splits), "skipped": report.skipped, "summary": str(report)})
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return report


def caption_from_name(rel: str | os.PathLike) -> str:
    """A weak caption from a file's path relative to SRC: "dogs/dog_bark_03.wav" -> "dog bark".

    Each folder and the file name (without its extension) is cut into words at anything that is not a
    letter (underscores, dashes, digits: numbers and take numbers go) and at camelCase; single letters and
    words that name no sound (take, v, copy, final, mono, 44khz, sample, audio, train, ...: GENERIC_WORDS)
    are dropped. The file's words are kept; a folder's word is dropped when a deeper level already has it
    (singular and plural alike: "dogs" is covered by "dog"). Levels are joined outer to inner with ", "
    ("footsteps/gravel_slow_02.wav" -> "footsteps, gravel slow"). May be "" (a file called 01.wav).
    """
    parts = PurePosixPath(Path(rel).as_posix()).parts
    levels = [_name_words(p) for p in parts[:-1]] + [_name_words(PurePosixPath(parts[-1]).stem)] if parts else []
    seen: set[str] = set()
    kept: list[list[str]] = []
    for words in reversed(levels):  # the file first: its words are the most specific
        level = []
        for w in words:
            key = _word_key(w)
            if key not in seen:
                seen.add(key)
                level.append(w)
        kept.append(level)
    return ", ".join(" ".join(level) for level in reversed(kept) if level)


def assign_splits(rels: list[str], valid_share: float = VALID_SHARE) -> list[str]:
    """"train" / "valid" per relative path: valid when the path's hash falls in the lowest `valid_share`;
    at least one of each (the lowest hash goes to valid, the highest to train) when there are two or more."""
    u = [_unit_hash(r) for r in rels]
    splits = ["valid" if x < valid_share else "train" for x in u]
    if len(rels) >= 2:
        if "valid" not in splits:
            splits[int(np.argmin(u))] = "valid"
        if "train" not in splits:
            splits[int(np.argmax(u))] = "train"
    return splits


def label_text(pred: dict[str, Any]) -> str:
    """The classifier's top class as caption words: the SFX class, the instrument, or "<language> speech"."""
    domain = pred.get("domain")
    if domain == "sfx":
        return str(pred.get("sfx_class") or "sound effect")
    if domain == "music":
        return str(pred.get("instrument") or "music")
    if domain == "speech":
        code = pred.get("language")
        return f"{LANGUAGES.get(code, code)} speech" if code else "speech"
    return str(domain or "")


def append_label(caption: str, label: str) -> str:
    """`caption, label`, unless every word of the label is already in the caption."""
    have = {_word_key(w) for w in re.findall(r"[^\W\d_]+", caption.lower())}
    words = re.findall(r"[^\W\d_]+", label.lower())
    if not words or all(_word_key(w) in have for w in words):
        return caption
    return f"{caption}, {label}" if caption else label


# -------------------------------------------------------------------------------------------- internals


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _check_out(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise ValueError(f"--out {out} is inside the source folder {src}; write the corpus elsewhere")
    if o in s.parents:
        raise ValueError(f"the source folder {src} is inside --out {out}; write the corpus elsewhere")
    if out.is_dir() and any(out.iterdir()) and not (out / IMPORT_FILE).is_file():
        raise ValueError(f"--out {out} is not empty and is not an earlier import (no {IMPORT_FILE}); "
                         "use a new or empty folder")


def _scan(src: Path, report: ImportReport) -> dict[str, Path]:
    """Audio files under `src`, relative POSIX path -> path, sorted; other audio formats counted as skipped."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_FOLDERS)
        for name in sorted(filenames):
            if name.startswith("."):  # hidden, and macOS's ._name.wav resource forks (not audio)
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(src).as_posix()
            suffix = path.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                found[rel] = path
            elif suffix in OTHER_AUDIO_SUFFIXES:
                report.skip(f"{suffix} is not read; convert to wav, flac or ogg", rel)
    return dict(sorted(found.items()))


def _check_count(src: Path, n: int, min_files: int, report: ImportReport, after: str = "") -> None:
    if n >= min_files:
        return
    skipped = sum(len(v) for v in report.skipped.values())
    extra = f" ({skipped} more skipped: {', '.join(report.skipped)})" if skipped else ""
    raise ValueError(f"{src}: {_n(n, 'usable audio file')}{' after ' + after if after else ''}{extra}, need at least "
                     f"{min_files} (.wav, .flac or .ogg, searched recursively): the validation split holds out "
                     "whole files and the rest must be enough to learn from")


def _caption_table(src: Path, captions: str | os.PathLike | None) -> Path | None:
    if captions is not None:
        path = Path(captions)
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"--captions {path}: expected a .csv or .jsonl file")
        return path
    return next((src / name for name in METADATA_FILES if (src / name).is_file()), None)


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line or row number, row)]) of a CSV or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (a binary file, or another encoding)") from None
    if path.suffix.lower() == ".jsonl":
        rows = list(jsonl_rows(path))  # the corpus reader's: same line-numbered errors
        return list(dict.fromkeys(k for _, row in rows for k in row)), rows
    try:
        reader = csv.DictReader(text.splitlines())
        rows = [(n, row) for n, row in enumerate(reader, 2)  # line 1 is the header
                if any(isinstance(v, str) and v.strip() for v in row.values())]
        columns = [c for c in (reader.fieldnames or []) if c is not None]
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None
    return columns, rows


def _table_sources(table: Path, src: Path, files: dict[str, Path], report: ImportReport) -> list[Source]:
    columns, rows = _read_table(table)
    lower = {c.strip().lower(): c for c in columns}
    found = ", ".join(columns) if columns else "none"
    cap = next((lower[k] for k in TABLE_CAPTION_COLUMNS if k in lower), None)
    if cap is None:
        raise ValueError(f"{table}: no caption column (looked for {', '.join(TABLE_CAPTION_COLUMNS)}; "
                         f"columns found: {found})")
    file_col = next((lower[k] for k in TABLE_FILE_COLUMNS if k in lower), None)
    by_id = file_col is None
    if by_id:
        file_col = next((lower[k] for k in ID_COLUMNS if k in lower), None)
    if file_col is None:
        raise ValueError(f"{table}: no audio file column (looked for {', '.join(TABLE_FILE_COLUMNS + ID_COLUMNS)}; "
                         f"columns found: {found})")
    line = "line" if table.suffix.lower() == ".jsonl" else "row"
    finder = _Finder(src, files)
    sources: dict[str, Source] = {}
    for n, row in rows:
        where = f"{line} {n} of {table}"
        value = row.get(file_col)
        key = str(value).strip() if value is not None else ""
        if not key:
            raise ValueError(f"{where}: no file in column {file_col!r}")
        rel = finder.find(key, where, by_id=by_id)
        if rel in sources:
            raise ValueError(f"{where}: {rel} is listed again (first in {sources[rel].where}); one row per file")
        text = _caption_value(row.get(cap))
        if not text:
            raise ValueError(f"{where}: no usable caption for {src / rel} (column {cap!r} is empty)")
        sources[rel] = Source(path=files[rel], rel=rel, caption=text, where=where)
    for rel in files:
        if rel not in sources:
            report.skip(f"not listed in {table.name}", rel)
    return [sources[rel] for rel in sorted(sources)]


def _caption_value(value: Any) -> str:
    if isinstance(value, list):  # a JSON list of captions: the first
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if value is None or isinstance(value, dict | bool):
        return ""
    return " ".join(str(value).split())


class _Finder:
    """A table row's file: a path relative to SRC, else a unique file name, else a unique stem (or "Y<stem>",
    AudioCaps' downloads); ids (`by_id`) by stem only."""

    def __init__(self, src: Path, files: dict[str, Path]):
        self.src, self.files = src, files
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for rel in files:
            p = PurePosixPath(rel)
            self.by_name.setdefault(p.name, []).append(rel)
            self.by_stem.setdefault(p.stem, []).append(rel)

    def find(self, key: str, where: str, *, by_id: bool) -> str:
        rel = PurePosixPath(key.replace("\\", "/")).as_posix().removeprefix("./")
        if not by_id:
            if rel in self.files:
                return rel
            path = self.src / rel
            if path.is_file() and path.suffix.lower() not in AUDIO_SUFFIXES:
                raise ValueError(f"{where}: {path} is not a .wav, .flac or .ogg file; convert it or remove its row")
        name = PurePosixPath(rel).name
        stem = PurePosixPath(name).stem if PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES else name
        tables = [(self.by_stem, stem), (self.by_stem, f"Y{stem}")]
        if not by_id:
            tables.insert(0, (self.by_name, name))
        for table, k in tables:
            hits = table.get(k)
            if hits and len(hits) > 1:
                raise ValueError(f"{where}: {key!r} matches several files under {self.src} ({', '.join(hits[:3])}); "
                                 "give paths relative to the source folder")
            if hits:
                return hits[0]
        raise FileNotFoundError(f"{where}: audio file {key!r} not found under {self.src}; restore it or remove "
                                "its row")


def _name_sources(src: Path, files: dict[str, Path]) -> list[Source]:
    sources = []
    for rel, path in files.items():
        text = caption_from_name(rel)
        if not text:
            raise ValueError(f"no usable caption for {path}: its folder and file names hold no words that describe "
                             "a sound; rename it (e.g. dog_bark_01.wav) or give captions with --captions FILE")
        sources.append(Source(path=path, rel=rel, caption=text, where="name"))
    return sources


def _name_words(part: str) -> list[str]:
    part = re.sub(r"(?<=[^\W\d_])(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", " ", part)  # camelCase, DogBark, WAVFile
    words = re.findall(r"[^\W\d_]+", part.lower())  # letters only: digits and punctuation split words and go
    out: list[str] = []
    for w in words:
        if len(w) > 1 and w not in GENERIC_WORDS and w not in out:
            out.append(w)
    return out


def _word_key(word: str) -> str:
    """Singular and plural alike: dogs -> dog, boxes -> box, flies -> fly, glass -> glass."""
    if len(word) > 3:
        if word.endswith("ies"):
            return word[:-3] + "y"
        if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
            return word[:-2]
        if word.endswith("s") and not word.endswith("ss"):
            return word[:-1]
    return word


def _unit_hash(rel: str) -> float:
    digest = hashlib.sha256(f"soundsmith-import-split:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)


def _load_labeler(label_captions: Any) -> Any:
    if label_captions is None or hasattr(label_captions, "predict"):
        return label_captions
    from soundsmith.eval.labels import load_label_classifier

    return load_label_classifier(label_captions)


def _describe_labeler(label_captions: Any, labeler: Any) -> str | None:
    if labeler is None:
        return None
    if isinstance(label_captions, str | os.PathLike):
        return str(Path(label_captions).resolve())
    return str(getattr(labeler, "name", type(labeler).__name__))


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new folder `parent/prefix<random>`, with the permissions the umask gives (mkdtemp's are 0700)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    for f in reversed(missing):
        f.mkdir()
        made.append(f)
    return made


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished import to `out`; an earlier import there is replaced (after the rename succeeds)."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = _new_folder(out.parent, f".{out.name}.old-")
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _convert(sources: list[Source], tmp: Path, report: ImportReport, *, sample_rate: int, clip_seconds: float,
             max_clips_per_file: int, labeler: Any, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    num = round(clip_seconds * sample_rate)
    (tmp / STAGING).mkdir()
    rows: list[dict[str, Any]] = []
    bar = tqdm(sources, desc=f"import {report.out.name}", unit="file", disable=not progress, dynamic_ncols=True)
    try:
        for s in bar:
            sr, channels = int(s.info.samplerate), int(s.info.channels)
            # read only what can become clips (soxr's edges: a few ms more)
            wave, _ = read_audio(s.path, duration_s=max_clips_per_file * clip_seconds + 0.05)
            mono = wave.mean(0) if wave.shape[0] > 1 else wave[0]
            mono = resample(mono.astype(np.float32), sr, sample_rate) if sr != sample_rate else mono
            clips, fit = _fit(mono, num, s.info.frames / sr, clip_seconds, max_clips_per_file)
            kept = []
            for k, clip in enumerate(clips):
                if float(np.sqrt(np.mean(np.square(clip, dtype=np.float64)))) < SILENT_RMS:
                    report.silent_clips += 1
                    continue
                peak = float(np.abs(clip).max())
                if peak > MAX_PEAK:
                    clip = clip * (MAX_PEAK / peak)
                    report.attenuated += 1
                kept.append((k, clip.astype(np.float32)))
            if not kept:
                report.skip("silent", s.rel)
                continue
            caption, labels = s.caption, {}
            if labeler is not None:
                pred = labeler.predict(kept[0][1][None], sample_rate)
                labels["predicted"] = dict(pred)
                caption = append_label(caption, label_text(pred))
                report.labelled += caption != s.caption
            report.files += 1
            report.resampled[sr] += sr != sample_rate
            report.mixed_down[channels] += channels > 1
            report.looped += fit == "looped"
            report.cropped += fit in ("cropped", "split")
            report.split_up += len(clips) > 1
            report.capped += s.info.frames / sr >= (max_clips_per_file + 1) * clip_seconds
            for k, clip in kept:
                index = len(rows)
                name = f"{STAGING}/{index:06d}.wav"  # moved into its split's folder at the end
                write_audio(tmp / name, clip[None], sample_rate, subtype="PCM_16")
                rows.append({
                    "file_name": name, "caption": caption, "split": None,
                    "labels": {"source": s.rel, "start_s": round(k * clip_seconds, 6), "fit": fit,
                               "caption_from": "name" if s.where == "name" else "table",
                               "source_sample_rate": sr, "source_channels": channels,
                               "source_seconds": round(s.info.frames / sr, 3), **labels},
                    "duration": num / sample_rate, "sample_rate": sample_rate, "index": index})
                report.clips += 1
    finally:
        bar.close()
    report.resampled = +report.resampled  # drop the zero counts
    report.mixed_down = +report.mixed_down
    return rows


def _place_in_splits(rows: list[dict[str, Any]], tmp: Path, report: ImportReport, valid_share: float) -> None:
    """Give each kept file its split (`assign_splits`) and move its clips from the staging folder there."""
    rels = list(dict.fromkeys(r["labels"]["source"] for r in rows))
    split_of = dict(zip(rels, assign_splits(rels, valid_share)))
    for split in ("train", "valid"):
        (tmp / split).mkdir()
    for r in rows:
        r["split"] = split_of[r["labels"]["source"]]
        name = f"{r['split']}/{r['index']:06d}.wav"
        os.replace(tmp / r["file_name"], tmp / name)
        r["file_name"] = name
        report.splits[r["split"]] += 1
    report.split_files.update(split_of.values())
    (tmp / STAGING).rmdir()


def _fit(mono: np.ndarray, num: int, seconds: float, clip_seconds: float, max_clips: int
         ) -> tuple[list[np.ndarray], str]:
    """Clips of `num` samples from a mono wave: ([looped], "looped"), ([whole], "whole") or consecutive clips
    ("cropped": one clip, the rest dropped; "split": several)."""
    if mono.shape[0] < num:
        return [_loop(mono, num, round(LOOP_FADE_S * num / clip_seconds))], "looped"
    count = min(max_clips, mono.shape[0] // num)
    clips = [mono[k * num:(k + 1) * num] for k in range(count)]
    if count > 1:
        return clips, "split"
    return clips, "whole" if seconds <= clip_seconds + 0.01 else "cropped"  # within 10 ms: nothing dropped


def _loop(wave: np.ndarray, num: int, fade: int) -> np.ndarray:
    """Repeat `wave` to `num` samples; each seam crossfades the end into the start over `fade` samples."""
    n = wave.shape[0]
    fade = min(fade, n // 4)
    period = n - fade
    seg = wave[:period].copy()
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        seg[:fade] = wave[period:] * (1 - ramp) + wave[:fade] * ramp
    reps = -(-(num - period) // period)
    return np.concatenate([wave[:period], *([seg] * reps)])[:num]
