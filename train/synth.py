"""The synthetic captioned corpus: render, augment, caption and write clips as an audiofolder.

Layout of a corpus folder DIR:

    DIR/corpus.json               the arguments that determine every byte (checked when resuming)
    DIR/{split}/{index:06d}.wav   16-bit PCM mono clips, split in train / valid / test
    DIR/{split}/{index:06d}.json  the clip's metadata row (written after its WAV: it marks the clip done)
    DIR/metadata.jsonl            every row, sorted by index, written at the end (the audiofolder index)

Row fields: file_name (relative to DIR), caption, domain, labels (the renderer's labels plus the
`augmentation` record), duration, sample_rate, seed (the corpus seed), split, index.

Clip i depends only on (seed, i) and the arguments: its generator is
`SeedSequence([seed, i])`, whose four children pick the domain, render, augment and caption, so
the same arguments give byte-identical files with any number of workers, in any order, and a
rerun only renders the clips whose row is missing. Every file is written atomically; leftover
temporary files of a killed run are removed on the next run.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.codecs.audio import write_audio
from soundsmith.core.captions import CAPTION_STYLES, TEMPLATES_FILE, caption
from soundsmith.core.files import write_json, write_text_atomic
from soundsmith.core.run_lock import (
    check_folder_free,
    check_output_dir_arg,
    lock_until_return,
    releases_folder_locks,
)
from soundsmith.train.augment import augment

log = logging.getLogger(__name__)

DOMAINS = ("music", "sfx", "speech")
DOMAIN_WEIGHTS = {"music": 0.4, "sfx": 0.4, "speech": 0.2}  # renormalised over the requested domains
RENDERERS = {  # domain -> "module:function"; each renders (rng, duration_s, sample_rate) -> (wave [T], labels)
    "music": "soundsmith.train.music:render_music",
    "sfx": "soundsmith.train.sfx:render_sfx",
    "speech": "soundsmith.train.speech:render_speech",
}
SPLITS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
SPLIT_NAMES = tuple(name for name, _ in SPLITS)
CLIP_SECONDS = (0.5, 60.0)
SAMPLE_RATES = (8000, 48000)
CORPUS_FORMAT = 1
MIN_RMS = 1e-3  # a renderer returning less is broken (the corpus never holds silent clips)

Renderer = Callable[[np.random.Generator, float, int], tuple[np.ndarray, dict]]


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines a corpus's bytes; stored as DIR/corpus.json."""

    num_clips: int
    seed: int
    clip_seconds: float
    sample_rate: int
    domains: tuple[str, ...]
    caption_style: str
    renderers: dict[str, str] = field(default_factory=dict)  # domain -> "module:function"
    code: str = ""  # hash of the synthesizer's and renderers' source: a code change invalidates resuming
    format: int = CORPUS_FORMAT

    @property
    def num_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = list(self.domains)
        d["domain_weights"] = normalized_weights(self.domains)
        return d


@dataclass
class SynthReport:
    """What a `synthesize_corpus` call did; `str()` is the closing line the CLI prints."""

    out: Path
    num_clips: int
    rendered: int
    skipped: int
    wall_s: float
    audio_s: float
    domain_counts: dict[str, int]
    domain_ms: dict[str, float]  # mean wall time per clip in a worker (render, augment, caption, write), by domain

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def clips_per_s(self) -> float:
        return self.rendered / self.wall_s if self.wall_s > 0 else float("inf")

    def __str__(self) -> str:
        head = f"{self.out}: {self.num_clips} clips"
        if self.rendered == 0:
            return f"{head}, all already synthesized; rewrote metadata.jsonl"
        per = ", ".join(f"{d} {self.domain_counts[d]} x {self.domain_ms[d]:.1f} ms" for d in sorted(self.domain_counts))
        return (f"{head}: synthesized {self.rendered} ({self.audio_s / 3600:.3f} h of audio), kept {self.skipped}, "
                f"in {self.wall_s:.1f} s = {self.x_realtime:.0f}x real time, {self.clips_per_s:.1f} clips/s "
                f"(per clip in a worker: {per})")


# ------------------------------------------------------------------------------------------ public API


@releases_folder_locks  # the lock taken on `out` below is held until it returns
def synthesize_corpus(
    out: str | os.PathLike,
    *,
    num_clips: int | None = None,
    hours: float | None = None,
    seed: int = 0,
    clip_seconds: float = 5.0,
    sample_rate: int = 16000,
    workers: int = 1,
    domains: Sequence[str] = DOMAINS,
    caption_style: str = "train",
    renderers: Mapping[str, Renderer] | None = None,
    progress: bool = True,
) -> SynthReport:
    """Synthesize (or resume) the captioned corpus in `out`. Returns a report; prints it if `progress`.

    Args:
        out: corpus folder, created if missing. If it holds a corpus made with other arguments, a
            ValueError says which differ.
        num_clips: number of clips; give this or `hours`.
        hours: hours of audio; num_clips = ceil(hours * 3600 / clip_seconds).
        seed: corpus seed, an integer in [0, 2**63-1] (default 0).
        clip_seconds: clip length in seconds, 0.5-60 (default 5).
        sample_rate: 8000-48000 Hz (default 16000).
        workers: processes (default 1 = in this process). The output does not depend on it.
        domains: any of "music", "sfx", "speech" (default all three, weighted 0.4 / 0.4 / 0.2).
        caption_style: "train" (default), "heldout" or "all" (see core/captions.py).
        renderers: domain -> renderer, replacing the default modules (tests, custom domains). Each must
            be a module-level function so worker processes can import it.
        progress: show a progress bar and print the report at the end (default True).
    """
    t0 = time.perf_counter()
    out = check_output_dir_arg(out)
    check_folder_free(out)
    spec, funcs = _make_spec(num_clips=num_clips, hours=hours, seed=seed, clip_seconds=clip_seconds,
                             sample_rate=sample_rate, domains=domains, caption_style=caption_style,
                             renderers=renderers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")

    # 1. open the folder: lock it, check or write corpus.json, remove a killed run's temporary files
    out.mkdir(parents=True, exist_ok=True)  # after every argument is checked
    lock_until_return(out)  # one process per corpus folder (its spawned workers inherit no lock)
    _open_corpus(out, spec)
    done = _finished_clips(out, spec)
    todo = [i for i in range(spec.num_clips) if i not in done]

    # 2. render what is missing
    from tqdm.auto import tqdm

    counts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    bar = tqdm(total=spec.num_clips, initial=len(done), unit="clip", desc=f"synth {out.name}",
               disable=not progress or not todo, dynamic_ncols=True)
    try:
        for domain, elapsed in _run(todo, spec, out, funcs, workers):
            counts[domain] += 1
            seconds[domain] += elapsed
            bar.update(1)
    finally:
        bar.close()

    # 3. the audiofolder index
    write_metadata(out, spec)
    report = SynthReport(out=out, num_clips=spec.num_clips, rendered=len(todo), skipped=len(done),
                         wall_s=time.perf_counter() - t0, audio_s=len(todo) * spec.num_samples / spec.sample_rate,
                         domain_counts=dict(counts),
                         domain_ms={d: 1000 * seconds[d] / counts[d] for d in counts})
    if progress:
        print(report)
    return report


def make_clip(index: int, spec: CorpusSpec, renderers: Mapping[str, Renderer]) -> tuple[np.ndarray, dict[str, Any]]:
    """Clip `index` of the corpus `spec`, without writing it: (wave [T] float32, metadata row)."""
    # Four independent streams: changing the caption style (or a renderer's rng use) leaves the
    # other streams, hence the domain choice and the augmentation, as they were.
    domain_ss, render_ss, augment_ss, caption_ss = np.random.SeedSequence([spec.seed, index]).spawn(4)
    weights = normalized_weights(spec.domains)
    domain = spec.domains[int(np.random.default_rng(domain_ss).choice(len(spec.domains), p=list(weights.values())))]

    wave, labels = renderers[domain](np.random.default_rng(render_ss), spec.clip_seconds, spec.sample_rate)
    wave = _check_render(wave, labels, domain, index, spec)
    labels = dict(labels)
    wave, labels["augmentation"] = augment(wave, spec.sample_rate, np.random.default_rng(augment_ss),
                                           far=labels.get("distance") == "far")
    text = caption(labels, np.random.default_rng(caption_ss), style=spec.caption_style)
    split = clip_split(spec.seed, index)
    row = {
        "file_name": f"{split}/{index:06d}.wav",
        "caption": text,
        "domain": domain,
        "labels": labels,
        "duration": spec.num_samples / spec.sample_rate,
        "sample_rate": spec.sample_rate,
        "seed": spec.seed,
        "split": split,
        "index": index,
    }
    return wave, row


def clip_split(seed: int, index: int) -> str:
    """"train" / "valid" / "test" (80 / 10 / 10) from a stable hash of (seed, index)."""
    digest = hashlib.sha256(f"soundsmith-split:{seed}:{index}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if u < edge:
            return name
    return SPLITS[-1][0]


def normalized_weights(domains: Sequence[str]) -> dict[str, float]:
    total = sum(DOMAIN_WEIGHTS[d] for d in domains)
    return {d: DOMAIN_WEIGHTS[d] / total for d in domains}


def num_clips_for_hours(hours: float, clip_seconds: float) -> int:
    """ceil(hours * 3600 / clip_seconds), immune to float noise (4 h of 5 s clips is 2880, not 2881)."""
    return max(1, math.ceil(round(hours * 3600 / clip_seconds, 9)))


def write_metadata(out: str | os.PathLike, spec: CorpusSpec | None = None) -> Path:
    """(Re)write DIR/metadata.jsonl from the per-clip rows, sorted by index; atomic."""
    out = Path(out)
    if spec is None:
        spec = read_spec(out)
    lines = []
    for index in range(spec.num_clips):
        path = out / clip_split(spec.seed, index) / f"{index:06d}.json"
        if not path.is_file():
            raise FileNotFoundError(f"clip row missing: {path} (rerun the same `data synth` command to finish)")
        with open(path, encoding="utf-8") as f:
            lines.append(json.dumps(json.load(f), ensure_ascii=False))
    return write_text_atomic(out / "metadata.jsonl", "".join(line + "\n" for line in lines))


def read_spec(out: str | os.PathLike) -> CorpusSpec:
    """The CorpusSpec stored in DIR/corpus.json."""
    path = Path(out) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a soundsmith corpus (no corpus.json): {out}")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d.pop("domain_weights", None)
    d["domains"] = tuple(d["domains"])
    return CorpusSpec(**d)


# -------------------------------------------------------------------------------------------- internals


def _make_spec(*, num_clips: int | None, hours: float | None, seed: int, clip_seconds: float, sample_rate: int,
               domains: Sequence[str], caption_style: str, renderers: Mapping[str, Renderer] | None
               ) -> tuple[CorpusSpec, dict[str, Renderer]]:
    """Check the arguments (one-line ValueErrors) and resolve the renderers."""
    if (num_clips is None) == (hours is None):
        raise ValueError("give exactly one of num_clips or hours")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63-1], got {seed!r}")
    if not CLIP_SECONDS[0] <= clip_seconds <= CLIP_SECONDS[1]:
        raise ValueError(f"clip_seconds must be in [{CLIP_SECONDS[0]}, {CLIP_SECONDS[1]}], got {clip_seconds}")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or \
            not SAMPLE_RATES[0] <= sample_rate <= SAMPLE_RATES[1]:
        raise ValueError(f"sample_rate must be an integer in [{SAMPLE_RATES[0]}, {SAMPLE_RATES[1]}] Hz, got {sample_rate}")
    if hours is not None:
        if not (math.isfinite(hours) and hours > 0):
            raise ValueError(f"hours must be > 0, got {hours}")
        num_clips = num_clips_for_hours(hours, clip_seconds)
    if isinstance(num_clips, bool) or int(num_clips) != num_clips or num_clips < 1:
        raise ValueError(f"num_clips must be an integer >= 1, got {num_clips!r}")
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"domains must be a non-empty list of {', '.join(DOMAINS)}, got {list(domains)}")
    domains = tuple(d for d in DOMAINS if d in domains)  # canonical order: "sfx,music" == "music,sfx"
    if caption_style not in CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {', '.join(CAPTION_STYLES)}, got {caption_style!r}")

    funcs: dict[str, Renderer] = {}
    names: dict[str, str] = {}
    for d in domains:
        if renderers is not None and d in renderers:
            funcs[d] = renderers[d]
        else:
            funcs[d] = _import_renderer(d)
        names[d] = f"{funcs[d].__module__}:{funcs[d].__qualname__}"
    spec = CorpusSpec(num_clips=int(num_clips), seed=int(seed), clip_seconds=float(clip_seconds),
                      sample_rate=int(sample_rate), domains=domains, caption_style=caption_style,
                      renderers=names, code=_code_hash(funcs.values()))
    return spec, funcs


def _import_renderer(domain: str) -> Renderer:
    module, name = RENDERERS[domain].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"the {domain} renderer {RENDERERS[domain]} is not available ({err}); "
                         f"choose other --domains") from None


def _code_hash(funcs: Iterable[Renderer]) -> str:
    """sha256 of the source files that shape a clip: this module, augment, captions + templates, renderers."""
    here = Path(__file__).parent
    files = {Path(__file__), here / "augment.py", Path(inspect.getsourcefile(caption)), TEMPLATES_FILE}
    for fn in funcs:
        source = inspect.getsourcefile(fn)
        if source:
            files.add(Path(source))
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _open_corpus(out: Path, spec: CorpusSpec) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out is not a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "corpus.json"
    if path.is_file():
        old = read_spec(out).to_json()
        new = spec.to_json()
        args = ("num_clips", "seed", "clip_seconds", "sample_rate", "domains", "caption_style")
        diff = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in args if old.get(k) != new.get(k)]
        what = "it was made with different arguments"
        if not diff:  # same arguments, but other renderers or changed code would make other bytes
            diff = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in new if old.get(k) != new.get(k)]
            what = "it was made by other synthesizer or renderer code"
        if diff:
            raise ValueError(f"{out} already holds a corpus, but {what} ({'; '.join(diff)}); "
                             f"rerun with the same arguments and code to resume, or use a new --out folder")
    else:
        nonempty = [p for p in out.iterdir() if not p.name.startswith(".")]
        if nonempty:
            raise ValueError(f"{out} is not empty and holds no corpus.json; use a new or empty --out folder")
        write_json(path, spec.to_json())
    for folder in (out, *(out / s for s in SPLIT_NAMES)):
        folder.mkdir(exist_ok=True)
        for part in folder.glob(".*.part"):  # temporary files of a killed run (codecs.audio writes atomically)
            part.unlink(missing_ok=True)


def _finished_clips(out: Path, spec: CorpusSpec) -> set[int]:
    """Indices whose row (written after the WAV) and WAV both exist."""
    done = set()
    for split in SPLIT_NAMES:
        for row in (out / split).glob("*.json"):
            if row.stem.isdigit() and row.with_suffix(".wav").is_file():
                index = int(row.stem)
                if index < spec.num_clips and clip_split(spec.seed, index) == split:
                    done.add(index)
    return done


def _run(todo: list[int], spec: CorpusSpec, out: Path, funcs: dict[str, Renderer], workers: int
         ) -> Iterable[tuple[str, float]]:
    """Yield (domain, seconds) per finished clip; in this process or in a pool of `workers` processes."""
    workers = min(workers, len(todo))
    if workers <= 1:
        for index in todo:
            yield _write_clip(index, spec, out, funcs)
        return
    # "spawn": a clean interpreter per worker; the renderers hold C libraries (espeak, tinysoundfont)
    # whose state must not be inherited through fork. Chunks amortize the inter-process traffic.
    chunksize = max(1, min(16, len(todo) // (8 * workers)))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(spec, out, funcs)) as pool:
        yield from pool.imap(_worker, todo, chunksize=chunksize)


_WORKER: tuple[CorpusSpec, Path, dict[str, Renderer]] | None = None


def _init_worker(spec: CorpusSpec, out: Path, funcs: dict[str, Renderer]) -> None:
    global _WORKER
    _WORKER = (spec, out, funcs)


def _worker(index: int) -> tuple[str, float]:
    assert _WORKER is not None, "worker not initialized"
    return _write_clip(index, *_WORKER)


def _write_clip(index: int, spec: CorpusSpec, out: Path, funcs: dict[str, Renderer]) -> tuple[str, float]:
    t = time.perf_counter()
    try:
        wave, row = make_clip(index, spec, funcs)
    except Exception as err:
        raise RuntimeError(f"clip {index} of seed {spec.seed} failed: {type(err).__name__}: {err}") from err
    # WAV first, then the row: a row on disk means its clip is complete.
    write_audio(out / row["file_name"], wave, spec.sample_rate, subtype="PCM_16", metadata=row)
    return row["domain"], time.perf_counter() - t


def _check_render(wave: Any, labels: Any, domain: str, index: int, spec: CorpusSpec) -> np.ndarray:
    """Enforce the renderer contract; a breach names the renderer and the clip (so it can be replayed)."""
    who = f"{spec.renderers[domain]} (clip {index}, seed {spec.seed})"
    if not isinstance(wave, np.ndarray) or wave.ndim != 1 or wave.shape[0] != spec.num_samples:
        shape = getattr(wave, "shape", type(wave).__name__)
        raise ValueError(f"{who} returned {shape}, expected a mono wave of shape ({spec.num_samples},)")
    if not np.issubdtype(wave.dtype, np.floating) or not np.isfinite(wave).all():
        raise ValueError(f"{who} returned a {wave.dtype} wave with non-finite samples or of a non-float type")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms <= MIN_RMS:
        raise ValueError(f"{who} returned a silent wave (RMS {rms:.2e} <= {MIN_RMS})")
    if not isinstance(labels, dict) or labels.get("domain") != domain:
        raise ValueError(f"{who} returned labels without domain={domain!r}")
    peak = float(np.abs(wave).max())
    if peak > 0.99 + 1e-6:  # augment() rescales anyway; the renderer contract says <= 0.99
        log.warning("%s returned peak %.3f > 0.99", who, peak)
    return wave.astype(np.float32, copy=False)
