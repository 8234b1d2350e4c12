"""What the app's buttons do, without Streamlit: settings -> pipeline call -> files on disk.

The pages turn widgets into a `GenerationSettings`, call `generate` / `generate_batch` / the eval harness
through these functions, and show what comes back. Generate's clips go into the output root and are listed in
its History index (`HistoryStore`), so they outlive the session; everything else (uploads, batches, eval runs)
goes under the session's folder (`Workspace`), which is deleted when the session ends.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundsmith.codecs.audio import DEFAULT_LOUDNESS_LUFS
from soundsmith.core.paths import checkout_folder

from .models import Capabilities, vocoder_name

MAX_UI_SEED = 2**53 - 1  # the largest integer a browser number field holds exactly
MODES = {  # audio-input mode -> (label, the Capabilities flag it needs)
    "text": ("Text only", None),
    "audio-to-audio": ("Audio-to-audio (style transfer)", "audio_to_audio"),
    "inpaint": ("Inpaint a time span", "inpaint"),
    "continuation": ("Continue the clip", "continuation"),
}
UPLOAD_TYPES = ("wav", "flac", "ogg")
MAX_BATCH_PROMPTS = 500
HISTORY_INDEX = "history.jsonl"  # in the output root: one line per press of Generate
HISTORY_SHOWN = 200  # the newest entries the app reads back: a big output root stays fast


# ------------------------------------------------------------------------------------------ workspace


class Workspace:
    """The session's temporary folder; deleted when the session (this object) is garbage-collected or the
    process exits. Sub-folders are numbered per kind: gen-001, batch-001, eval-001, upload-001."""

    def __init__(self, parent: str | os.PathLike | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="soundsmith-app-", dir=parent)
        self.root = Path(self._tmp.name)
        self._counters: dict[str, itertools.count] = {}

    def new_folder(self, kind: str) -> Path:
        counter = self._counters.setdefault(kind, itertools.count(1))
        while True:
            folder = self.root / f"{kind}-{next(counter):03d}"
            if not folder.exists():
                folder.mkdir(parents=True)
                return folder

    def save_upload(self, name: str, data: bytes, kind: str = "upload") -> Path:
        """Write an uploaded file under a new folder, keeping only its base name."""
        safe = Path(name).name or "upload"
        path = self.new_folder(kind) / safe
        path.write_bytes(data)
        return path

    @property
    def cache_dir(self) -> Path:
        """The eval harness's embedding cache for this session."""
        return self.root / "eval-cache"

    def cleanup(self) -> None:
        self._tmp.cleanup()


def check_uploaded_audio(path: str | os.PathLike) -> float:
    """Seconds of audio in an uploaded file; a one-line ValueError naming the file if it is not audio."""
    from soundsmith.codecs.audio import audio_info, read_audio

    path = Path(path)
    if path.suffix.lower().lstrip(".") not in UPLOAD_TYPES:
        raise ValueError(f"uploaded file {path.name} is not WAV, FLAC or OGG audio")
    try:
        info = audio_info(path)
        read_audio(path, duration_s=min(1.0, info.frames / max(info.samplerate, 1)))  # decodes: catches junk
    except ValueError:
        raise ValueError(f"uploaded file {path.name} is not readable audio (expected WAV, FLAC or OGG)") from None
    if info.frames == 0:
        raise ValueError(f"uploaded file {path.name} holds no audio samples")
    return info.frames / info.samplerate


# ------------------------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    """Every control of the Generate page; `pipeline_kwargs` turns them into one pipeline call.

    None means "the model's default". `seed` None draws a random seed in the app (so it fits a number field
    and can be reused). `mode` is a key of MODES; `audio` the uploaded clip in the session folder.
    `vocoder` is not a call argument: the page loads the model with it (models.load_model), and `check` makes
    sure the loaded copy is that one. `adapters` (LoRA adapter folders, all at `adapter_scale`) likewise: loaded
    with the model, checked by `check`; None (the batch page) takes whatever the loaded copy carries.
    `loudness_lufs` None turns the normalisation off (the decoder's level).
    """

    prompt: str = ""
    negative_prompt: str = ""
    duration_s: float | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_waveforms: int = 1
    mode: str = "text"
    audio: str | None = None
    audio_s: float | None = None  # length of `audio`
    strength: float | None = None
    inpaint_start_s: float | None = None
    inpaint_end_s: float | None = None
    vocoder: str | None = None  # a registry name (codecs/vocoders.py); None: the one the model folder names
    loudness_lufs: float | None = DEFAULT_LOUDNESS_LUFS  # output level; None: not normalised
    adapters: list[str] | None = None  # LoRA adapter folders the model is loaded with; None: not chosen here
    adapter_scale: float = 1.0  # the scale of every adapter in `adapters`

    def adapter_pairs(self) -> tuple[tuple[str, float], ...]:
        """(folder, scale) of each chosen adapter, as `models.load_model` takes them and `Capabilities` reports."""
        return tuple((str(Path(folder)), float(self.adapter_scale)) for folder in self.adapters or [])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, caps: Capabilities) -> None:
        """The app's own checks (the pipeline checks every range itself): one-line ValueErrors."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError("prompt is empty: describe the sound you want, e.g. 'rain on a tin roof'")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        flag = MODES[self.mode][1]
        if flag is not None and not getattr(caps, flag):
            raise ValueError(f"the {caps.backend} model does not support {MODES[self.mode][0].lower()}")
        if self.mode != "text" and not self.audio:
            raise ValueError(f"{MODES[self.mode][0]} needs an input clip: upload a WAV, FLAC or OGG file")
        if self.seed is not None and not 0 <= int(self.seed) <= MAX_UI_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_UI_SEED}], got {self.seed}")
        if not 1 <= int(self.num_waveforms) <= 64:
            raise ValueError(f"variations must be in [1, 64], got {self.num_waveforms}")
        if self.vocoder is not None and not caps.vocoders:
            raise ValueError(f"the {caps.backend} model takes no vocoder choice, got {self.vocoder!r}")
        if self.vocoder is not None and self.vocoder != caps.vocoder:
            raise ValueError(f"vocoder {self.vocoder!r} is not the one loaded ({caps.vocoder}): choose it in "
                             "the Vocoder control so the model is loaded with it")
        if self.adapters and not caps.adaptable:
            raise ValueError(f"the {caps.backend} model takes no LoRA adapters, got {', '.join(self.adapters)}")
        if self.adapters is not None and self.adapter_pairs() != tuple(caps.adapters):
            chosen = ", ".join(f"{Path(f).name} x{s:g}" for f, s in self.adapter_pairs()) or "none"
            loaded = ", ".join(f"{Path(f).name} x{s:g}" for f, s in caps.adapters) or "none"
            raise ValueError(f"adapters {chosen} are not the ones loaded ({loaded}): choose them in the Adapters "
                             "control so the model is loaded with them")

    def resolved_seed(self) -> int:
        return int(self.seed) if self.seed is not None else secrets.randbelow(2**31)

    def pipeline_kwargs(self, caps: Capabilities, seed: int) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for these settings on a model with `caps`."""
        kwargs: dict[str, Any] = {"num_waveforms_per_prompt": int(self.num_waveforms), "seed": int(seed),
                                  "negative_prompt": self.negative_prompt.strip() or None,
                                  "loudness_lufs": None if self.loudness_lufs is None else float(self.loudness_lufs)}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = float(self.guidance_scale)
        if caps.clap_score:  # each take shows its CLAP score
            kwargs["clap_score"] = True
        if caps.diffusion:
            if self.num_inference_steps is not None:
                kwargs["num_inference_steps"] = int(self.num_inference_steps)
            if self.scheduler:
                kwargs["scheduler"] = self.scheduler
        if caps.sampling:
            for name in ("temperature", "top_k", "top_p"):
                if getattr(self, name) is not None:
                    kwargs[name] = getattr(self, name)
        duration = None if self.duration_s is None else float(self.duration_s)
        if self.mode == "audio-to-audio":  # keeps the clip's length
            kwargs.update(audio=self.audio, strength=float(self.strength if self.strength is not None else 0.5))
            duration = None
        elif self.mode == "inpaint":
            start = float(self.inpaint_start_s or 0.0)
            end = float(self.inpaint_end_s if self.inpaint_end_s is not None else start)
            kwargs.update(audio=self.audio, inpaint=[(start, end)])
            if duration is not None and self.audio_s is not None and duration <= self.audio_s + 1e-3:
                duration = None  # the clip's own length; a longer one also outpaints past its end
        elif self.mode == "continuation":
            kwargs["audio_prompt"] = self.audio
        if duration is not None:
            kwargs["duration_s"] = duration
        return kwargs


# -------------------------------------------------------------------------------------------- results


@dataclass
class Take:
    """One generated clip: its files in the output root and what the pipeline reported."""

    index: int
    prompt: str
    seed: int | None
    clap_score: float | None
    duration_s: float
    sample_rate: int
    wav: Path
    flac: Path
    png: Path
    watermark: str = "off"  # "payload 0x1a2b (soundsmith-stdm/1)", or why there is none
    loudness: str = "not normalised"  # "-16 LUFS (gain +3.1 dB)", or that it kept the decoder's level
    nearest: tuple[float, str, str] | None = None  # (similarity, training file, its caption) of the nearest clip


@dataclass
class HistoryEntry:
    """One press of Generate."""

    id: int
    model: str
    settings: dict[str, Any]  # GenerationSettings.to_dict(), with the seed actually used
    parameters: dict[str, Any]  # what the pipeline reports (AudioOutput.parameters)
    takes: list[Take]
    seconds: float  # compute time
    vocoder: str | None = None  # the vocoder that decoded the clips (None: the model has no mel vocoder)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))  # kept across days

    @property
    def folder(self) -> Path:
        return self.takes[0].wav.parent.parent

    def take_settings(self, take: Take) -> dict[str, Any]:
        """Settings that redo exactly `take`: its seed, one variation (same seed + batch size = same audio)."""
        return {**self.settings, "seed": take.seed, "num_waveforms": 1}


def watermark_state(parameters: dict[str, Any]) -> str:
    """What a result card says about the watermark, from the output's sidecar fields."""
    if parameters.get("watermarked"):
        return f"payload 0x{int(parameters['watermark_payload']):04x} ({parameters.get('watermark_scheme')})"
    if parameters.get("watermark"):
        return "none: the clip is shorter than a watermark block (0.5 s)"
    return "off"


def loudness_state(parameters: dict[str, Any], index: int) -> str:
    """What a result card says about clip `index`'s level, from the output's sidecar fields."""
    target = parameters.get("loudness_lufs")
    if target is None:
        return "not normalised (the decoder's level)"
    gains = parameters.get("loudness_gain_db") or []
    gain = f" (gain {gains[index]:+.1f} dB)" if index < len(gains) else ""
    return f"{target:g} LUFS{gain}"


def vocoder_used(pipe: Any, parameters: dict[str, Any]) -> str | None:
    """The vocoder that decoded an output: the pipeline's record when it keeps one, else the loaded pipeline's."""
    recorded = parameters.get("vocoder")
    if isinstance(recorded, dict):
        recorded = recorded.get("name")
    return recorded if isinstance(recorded, str) and recorded else vocoder_name(pipe)


def generate(pipe: Any, settings: GenerationSettings, caps: Capabilities, folder: str | os.PathLike, *,
             entry_id: int, model: str, callback: Callable[[int, int], Any] | None = None,
             nearest: Callable[[Any, int], tuple[float, str, str]] | None = None) -> HistoryEntry:
    """Run one generation and write each clip as WAV and FLAC (with JSON sidecars) plus its waveform/mel PNG
    into `folder`. `nearest(wave [C, T], sample_rate)` -> (similarity, file, caption) of the nearest training
    clip (the novelty check), when a training index is set. Raises the pipeline's ValueError /
    GenerationCancelled unchanged."""
    from .plots import clip_figure_png

    settings.check(caps)
    seed = settings.resolved_seed()
    kwargs = settings.pipeline_kwargs(caps, seed)
    t0 = time.perf_counter()
    output = pipe(settings.prompt.strip(), callback=callback, **kwargs)
    seconds = time.perf_counter() - t0
    folder = Path(folder)
    wavs = output.save(folder / "wav", format="wav")
    flacs = output.save(folder / "flac", format="flac")
    takes = []
    for i, (wav, flac) in enumerate(zip(wavs, flacs)):
        audio = output.audios[i].numpy()  # [C, T]
        png = clip_figure_png(audio, output.sample_rate, folder / f"{wav.stem}.png")
        score = None if output.clap_scores is None else float(output.clap_scores[i])
        takes.append(Take(index=i, prompt=output.prompts[i], seed=output.seeds[i], clap_score=score,
                          duration_s=audio.shape[-1] / output.sample_rate, sample_rate=output.sample_rate,
                          wav=wav, flac=flac, png=png, watermark=watermark_state(output.parameters),
                          loudness=loudness_state(output.parameters, i),
                          nearest=None if nearest is None else nearest(audio, output.sample_rate)))
    return HistoryEntry(id=entry_id, model=model, settings={**settings.to_dict(), "seed": seed},
                        parameters=dict(output.parameters), takes=takes, seconds=seconds,
                        vocoder=vocoder_used(pipe, output.parameters))


# -------------------------------------------------------------------------------------------- history


def on_disk(entry: HistoryEntry) -> HistoryEntry | None:
    """`entry` without the takes whose WAV was deleted from disk; None when none is left."""
    takes = [t for t in entry.takes if t.wav.is_file()]
    if len(takes) == len(entry.takes):
        return entry
    return dataclasses.replace(entry, takes=takes) if takes else None


class HistoryStore:
    """The History of one output root: each press of Generate is a folder `gen-<time>-<random>` (wav/, flac/,
    PNGs) and one JSON line in `history.jsonl` (the settings, the pipeline's parameters, each clip's files
    relative to the root). Lines are only appended, each in one write under a lock file shared by every session
    and process, so a crash can cost at most the line being written, which readers skip."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.index = self.root / HISTORY_INDEX

    def new_folder(self) -> Path:
        """A new, empty folder for one generation's files (the root is created if missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            folder = self.root / f"gen-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:  # same second and same random suffix: draw again
                continue

    def append(self, entry: HistoryEntry) -> None:
        data = (json.dumps(self._record(entry), default=_plain, ensure_ascii=False) + "\n").encode("utf-8")
        with self._locked():
            fd = os.open(self.index, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: its last byte
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut by a crash: start a fresh one
                    data = b"\n" + data
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def load(self, limit: int | None = None) -> list[HistoryEntry]:
        """The newest `limit` (default HISTORY_SHOWN) entries with a clip still on disk, oldest first (ids 0: the
        session numbers them). Reads the index from its end, so the cost follows `limit`, not the root's size."""
        limit = HISTORY_SHOWN if limit is None else limit
        if not self.index.is_file():
            return []
        entries: list[HistoryEntry] = []
        for line in _lines_newest_first(self.index):
            entry = self._entry(line)
            entry = on_disk(entry) if entry is not None else None
            if entry is not None:
                entries.append(entry)
                if len(entries) >= limit:
                    break
        return entries[::-1]

    def remove(self, entries: Sequence[HistoryEntry]) -> None:
        """Delete these entries' folders, then drop every index line whose clips are all gone."""
        for entry in entries:
            folder = entry.folder
            if folder.parent.resolve() == self.root.resolve() and folder.name.startswith("gen-"):
                shutil.rmtree(folder, ignore_errors=True)
        if not self.index.is_file():
            return
        with self._locked():
            lines = self.index.read_bytes().splitlines(keepends=True)
            kept = [line.rstrip(b"\n") + b"\n" for line in lines
                    if (entry := self._entry(line)) is not None and on_disk(entry) is not None]
            tmp = self.index.with_name(f".{HISTORY_INDEX}.{os.getpid()}.tmp")
            tmp.write_bytes(b"".join(kept))
            os.replace(tmp, self.index)  # readers see the old index or the new one, never half of it

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # a separate lock file: `remove` replaces the index, and a writer must not append to the old inode
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{HISTORY_INDEX}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    def _record(self, entry: HistoryEntry) -> dict[str, Any]:
        def rel(path: Path) -> str:
            return Path(path).relative_to(self.root).as_posix()

        takes = [{**{k: v for k, v in dataclasses.asdict(t).items() if k not in ("wav", "flac", "png")},
                  "wav": rel(t.wav), "flac": rel(t.flac), "png": rel(t.png)} for t in entry.takes]
        return {"model": entry.model, "settings": entry.settings, "parameters": entry.parameters,
                "seconds": entry.seconds, "vocoder": entry.vocoder, "created": entry.created, "takes": takes}

    def _entry(self, line: bytes) -> HistoryEntry | None:
        """An index line -> entry; None for a blank, cut or foreign line, or one naming files outside the root."""
        try:
            record = json.loads(line)
            takes = []
            for t in record["takes"]:
                files = {k: self._inside(t[k]) for k in ("wav", "flac", "png")}
                nearest = t.get("nearest")
                takes.append(Take(index=int(t["index"]), prompt=str(t["prompt"]), seed=t.get("seed"),
                                  clap_score=t.get("clap_score"), duration_s=float(t["duration_s"]),
                                  sample_rate=int(t["sample_rate"]), watermark=str(t.get("watermark", "off")),
                                  loudness=str(t.get("loudness", "")),
                                  nearest=tuple(nearest) if nearest else None, **files))
            if not takes:
                return None
            return HistoryEntry(id=0, model=str(record["model"]), settings=dict(record["settings"]),
                                parameters=dict(record["parameters"]), takes=takes,
                                seconds=float(record["seconds"]), vocoder=record.get("vocoder"),
                                created=str(record.get("created", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def _inside(self, rel: str) -> Path:
        # the index is the app's own file, but what it names is served to visitors: keep it under the root
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"not a path inside the output root: {rel!r}")
        return self.root / rel


def _plain(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays, paths (the pipeline's parameters may hold them)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _lines_newest_first(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a file from its last to its first, reading blocks from the end."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        head = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            lines = (f.read(end - start) + head).split(b"\n")
            head = lines.pop(0)  # may continue in the block before
            end = start
            yield from reversed(lines)
        yield head


# ---------------------------------------------------------------------------------------------- batch


def prompts_from_text(text: str) -> list[str]:
    """One prompt per non-empty line ('#' starts a comment line)."""
    prompts = [line.strip() for line in (text or "").splitlines()]
    return [p for p in prompts if p and not p.startswith("#")]


def prompts_from_file(path: str | os.PathLike) -> list[str]:
    """Prompts of an uploaded .txt / .csv / .jsonl file (the CLI's `--prompts-file` reader)."""
    from soundsmith.pipelines.prompts import read_prompts_file

    path = Path(path)
    if path.suffix.lower() not in (".txt", ".csv", ".jsonl"):
        raise ValueError(f"prompt file {path.name} must be .txt, .csv or .jsonl")
    try:
        return read_prompts_file(path)
    except ValueError as err:  # name the upload, not the session folder
        raise ValueError(str(err).replace(str(path), path.name)) from None


@dataclass
class BatchResult:
    folder: Path
    rows: list[dict[str, Any]]  # one per clip: prompt, seed, clap_score, seconds of audio, file
    seconds: float


def generate_batch(pipe: Any, prompts: Sequence[str], settings: GenerationSettings, caps: Capabilities,
                   folder: str | os.PathLike, *, chunk: int = 4,
                   on_progress: Callable[[float, str], Any] | None = None) -> BatchResult:
    """Generate every prompt (text only; prompt i gets seed + i) in chunks of `chunk` prompts; write WAVs with
    sidecars and a manifest.csv into `folder`. `on_progress(fraction, text)` after each sampler step; returning
    False cancels (GenerationCancelled)."""
    if not prompts:
        raise ValueError("no prompts: paste one prompt per line or upload a .txt/.csv/.jsonl file")
    if len(prompts) > MAX_BATCH_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts is too many for the app: at most {MAX_BATCH_PROMPTS} "
                         "(use `soundsmith generate --prompts-file` for more)")
    for i, p in enumerate(prompts, 1):
        if not p.strip():
            raise ValueError(f"prompt {i} is empty")
    base = dataclasses.replace(settings, mode="text", audio=None, num_waveforms=1,
                               prompt=prompts[0])
    base.check(caps)
    seed = base.resolved_seed()
    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    starts = list(range(0, len(prompts), chunk))
    t0 = time.perf_counter()
    for n, s in enumerate(starts):
        part = list(prompts[s:s + chunk])

        def callback(step: int, total: int, n: int = n, first: int = s + 1, last: int = s + len(part)) -> Any:
            if on_progress is None:
                return True
            done = (n + step / total) / len(starts)
            return on_progress(done, f"prompts {first}-{last} of {len(prompts)}: step {step} of {total}")

        kwargs = base.pipeline_kwargs(caps, seed + s)
        output = pipe(part, callback=callback, **kwargs)
        for j, path in enumerate(output.save(folder, format="wav")):
            score = None if output.clap_scores is None else round(float(output.clap_scores[j]), 4)
            rows.append({"#": s + j + 1, "prompt": output.prompts[j], "seed": output.seeds[j], "clap_score": score,
                         "seconds": round(output.audios.shape[-1] / output.sample_rate, 3), "file": path.name})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (folder / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
    return BatchResult(folder=folder, rows=rows, seconds=time.perf_counter() - t0)


def zip_bytes(paths: Sequence[str | os.PathLike], *, with_sidecars: bool = True) -> bytes:
    """A zip (stored, audio does not compress) of `paths` and their JSON sidecars, flat by file name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        seen = set()
        for p in map(Path, paths):
            for f in (p, p.with_suffix(".json")) if with_sidecars else (p,):
                if f.is_file() and f.name not in seen:
                    seen.add(f.name)
                    zf.write(f, arcname=f.name)
    return buf.getvalue()


def zip_folder(folder: str | os.PathLike) -> bytes:
    folder = Path(folder)
    return zip_bytes(sorted(p for p in folder.iterdir() if p.is_file()), with_sidecars=False)


# ----------------------------------------------------------------------------------------- evaluation


def bundled_prompt_sets() -> dict[str, Path]:
    """The standard prompt sets committed under benchmarks/prompts/ (name -> file); none in an installed copy,
    which has no checkout beside it (the page then offers the upload)."""
    folder = checkout_folder("benchmarks", "prompts")
    if folder is None:
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix in (".jsonl", ".csv")}


def default_reference_dir() -> Path | None:
    """The checkout's standard corpus, where the bundled prompt sets' reference clips live (None if it is not
    here, as in an installed copy: the reference folder is then typed in)."""
    return checkout_folder("data", "corpus")


def score_uploaded_sets(generated: Sequence[Path], reference: Sequence[Path], workspace: Workspace, *,
                        metrics: Sequence[str], embedding: str, covariance: str, out: Path) -> dict[str, Any]:
    """The harness's `score_folders` over two sets of files in the session folder; report written to `out`."""
    from soundsmith.eval.harness import score_folders

    return score_folders(list(generated), list(reference), metrics=list(metrics), embedding=embedding,
                         covariance=covariance, cache_dir=workspace.cache_dir, out=out, device="cpu",
                         progress=False)


def evaluate_prompt_set(pipe: Any, model: str, prompts: Path, reference: Path | None, workspace: Workspace, *,
                        limit: int, num_per_prompt: int, seed: int, metrics: Sequence[str], embedding: str,
                        covariance: str, pipeline_kwargs: dict[str, Any], out: Path,
                        callback: Callable[[int, int], Any] | None = None) -> dict[str, Any]:
    """The harness's `run_eval` with the app's loaded pipeline: generate `limit` prompts, then score them.
    `callback(clips_done, clips_total)` follows the generation (False stops it)."""
    from soundsmith.eval.harness import run_eval

    return run_eval(model, prompts, reference, out, num_per_prompt=num_per_prompt, seed=seed, limit=limit,
                    pipeline=pipe, pipeline_kwargs=pipeline_kwargs, metrics=list(metrics), embedding=embedding,
                    covariance=covariance, cache_dir=workspace.cache_dir, progress=False, device="cpu",
                    callback=callback)


def per_clip_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-clip rows of a results dict (file name, prompt, CLAP score, per-clip FAD), worst CLAP score first."""
    rows = []
    for clip in results.get("per_clip", []) or []:
        rows.append({"file": Path(str(clip.get("file", ""))).name, "prompt": clip.get("prompt"),
                     "clap_score": clip.get("clap_score"), "fad": clip.get("fad"), "path": str(clip.get("file", ""))})
    return sorted(rows, key=lambda r: (r["clap_score"] is None, r["clap_score"] if r["clap_score"] is not None else 0.0))


def worst_clips(results: dict[str, Any], k: int = 3) -> list[dict[str, Any]]:
    """The k worst clips: by per-clip FAD (eval.report's choice) when computed, else by lowest CLAP score."""
    from soundsmith.eval.report import worst_clips as worst_by_fad

    by_fad = worst_by_fad(results, k)
    if by_fad:
        return [{**c, "why": f"per-clip FAD {c['fad']:.4g}"} for c in by_fad]
    scored = [c for c in results.get("per_clip", []) or [] if isinstance(c.get("clap_score"), float)]
    return [{**c, "why": f"CLAP score {c['clap_score']:.3f}"} for c in sorted(scored, key=lambda c: c["clap_score"])[:k]]
