"""Batch generation that streams to disk and resumes (`soundsmith generate --prompts-file`).

A batch is cut into pipeline calls of whole prompts (`outputs_per_call` outputs at most), at fixed
boundaries of the whole batch: an interrupted and resumed batch makes the same calls as an uninterrupted
one, so it gets the same audio. Each call's clips and JSON sidecars are written as soon as it returns
(atomically, `AudioOutput.save`) and its audio is dropped, so memory stays flat over any number of prompts.

Seeds: output i of the whole batch gets seed `seed + i` (clip k of prompt p: `seed + p * num_per_prompt + k`),
as one call over every prompt gives them.

Resuming: a `Manifest` in the output folder (`generate_manifest.jsonl`: line 1 the arguments that determine
the audio, then one line per finished clip) lets a rerun of the same command skip every prompt whose clips
are all recorded. A rerun with other arguments is refused in one line naming the first difference, as
`eval run` refuses one (`check_same_settings`, shared with eval/harness.py).

    manifest = Manifest.open(out, {"prompts_sha256": ..., "seed": 0, ...})
    generate_batch(pipe, prompts, out, seed=0, manifest=manifest, echo=print)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soundsmith.core.checks import MAX_SEED, check_int

log = logging.getLogger(__name__)

MANIFEST_NAME = "generate_manifest.jsonl"
MANIFEST_KIND = "soundsmith-generate-manifest"
DEFAULT_OUTPUTS_PER_CALL = 16  # small enough that Ctrl-C loses little, big enough to batch on a GPU


# ---------------------------------------------------------------------------------- same settings


def first_difference(before: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """`"key: old now new"` for the first of `keys` whose values differ, else None."""
    for key in keys:
        if before.get(key) != now.get(key):
            return f"{key}: {_short(before.get(key))} now {_short(now.get(key))}"
    return None


def check_same_settings(folder: str | os.PathLike, before: Mapping[str, Any], now: Mapping[str, Any],
                        keys: Iterable[str]) -> None:
    """A rerun into `folder` must use the settings of the clips already there: one-line ValueError otherwise."""
    diff = first_difference(before, now, keys)
    if diff is not None:
        raise ValueError(f"{folder} holds clips generated with other settings ({diff}); use a new --out folder "
                         "or the same settings")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------- manifest


@dataclass
class Manifest:
    """The record of one batch in its output folder: the arguments that determine the audio and the clips
    finished so far (output index -> file name). Nothing is written until the first clip is recorded, so a
    batch that fails before it leaves no manifest behind."""

    path: Path
    arguments: dict[str, Any]  # this run's (written on the first record)
    done: dict[int, str] = field(default_factory=dict)
    exists: bool = False
    recorded: dict[str, Any] = field(default_factory=dict)  # the arguments in the folder's manifest

    @classmethod
    def open(cls, folder: str | os.PathLike, arguments: Mapping[str, Any], *, ignore: Iterable[str] = (),
             keep_previous: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> Manifest:
        """The folder's manifest when there is one, checked against `arguments`, else a new one.

        Only the keys of `arguments` are compared (a key added later with `check` is compared then).

        Args:
            ignore: keys recorded for the user but not compared (a model folder's path: the weights'
                fingerprint is what must match).
            keep_previous: keys the command may leave None to take the recorded value (a seed drawn at random
                on the first run is kept by the rerun).
            defaults: keys added after a manifest may have been written -> the value its run had (a batch begun
                before adapters existed ran with none), so it still resumes.
        """
        path = Path(folder) / MANIFEST_NAME
        now = json.loads(json.dumps(dict(arguments)))  # JSON's view: what the file will hold
        if not path.is_file():
            return cls(path, now)
        before, done = _read_manifest(path)
        for key, value in (defaults or {}).items():
            before.setdefault(key, json.loads(json.dumps(value)))
        for key in keep_previous:
            if now.get(key) is None:
                now[key] = before.get(key)
        skip = set(ignore)
        check_same_settings(path.parent, before, now, [k for k in now if k not in skip])
        return cls(path, now, done, exists=True, recorded=before)

    def check(self, key: str, value: Any) -> None:
        """A setting known only later (the loaded model's fingerprint): recorded, or compared when resuming."""
        if self.exists:
            check_same_settings(self.path.parent, self.recorded, {key: value}, [key])
        self.arguments[key] = value

    def prompt_done(self, prompt_index: int, num_per_prompt: int) -> bool:
        first = prompt_index * num_per_prompt
        return all(i in self.done for i in range(first, first + num_per_prompt))

    def record(self, clips: Sequence[tuple[int, str]]) -> None:
        """Add finished clips (output index, file name); the first call writes the arguments line."""
        if not self.exists:
            header = {"kind": MANIFEST_KIND, "version": 1, "arguments": self.arguments}
            tmp = self.path.with_name(f".{self.path.name}.part")
            tmp.write_text(json.dumps(header) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)  # a manifest is whole or absent
            self.exists = True
        lines = "".join(json.dumps({"index": i, "file": name}) + "\n" for i, name in clips)
        with open(self.path, "a", encoding="utf-8") as f:  # one short append per call: a crash tears one line at most
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(dict(clips))


def _read_manifest(path: Path) -> tuple[dict[str, Any], dict[int, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable generate manifest ({' '.join(str(err).split())[:120]}); "
                         "use a new --out folder") from None
    if not isinstance(header, dict) or header.get("kind") != MANIFEST_KIND or not isinstance(
            header.get("arguments"), dict):
        raise ValueError(f"{path}: not a soundsmith generate manifest; use a new --out folder")
    done: dict[int, str] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            done[int(entry["index"])] = str(entry["file"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("%s: skipping a damaged line (its clip is made again)", path)
    return header["arguments"], done


# ------------------------------------------------------------------------------------------ batch


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during `generate_batch`: every finished clip is kept; `done` of `total` are in `folder`."""

    def __init__(self, done: int, total: int, folder: Path):
        super().__init__(f"{done} of {total} clips are in {folder}")
        self.done, self.total, self.folder = done, total, folder


@dataclass
class BatchResult:
    total: int  # clips of the whole batch
    skipped: int  # already recorded in the manifest
    written: int  # by this run


def check_batch_seed(seed: int, total: int) -> int:
    """Outputs get seeds seed ... seed + total - 1, all in [0, 2**63-1]: checked before the first call, since a
    call gets its seeds as a list and would only see the out-of-range one when its turn comes."""
    check_int("seed", seed, 0, MAX_SEED)
    if seed + total - 1 > MAX_SEED:
        raise ValueError(f"seed {seed} is too large for {total} outputs: they get seeds seed, seed+1, ..., which "
                         f"must stay <= 2**63-1; use a seed <= {MAX_SEED - total + 1}")
    return seed


def batch_seeds(seed: int, first_output: int, count: int) -> list[int]:
    """Seeds of outputs `first_output ...` of a batch seeded `seed`."""
    return [seed + first_output + j for j in range(count)]


def generate_batch(pipe: Any, prompts: Sequence[str], out: str | os.PathLike, *, seed: int | None,
                   num_per_prompt: int = 1, call_kwargs: Mapping[str, Any] | None = None, format: str = "wav",
                   outputs_per_call: int = DEFAULT_OUTPUTS_PER_CALL, manifest: Manifest | None = None,
                   progress: bool | None = None, echo: Callable[[Path], Any] | None = None) -> BatchResult:
    """Generate `num_per_prompt` clips per prompt into `out`, writing each call's clips as soon as it returns.

    Args:
        pipe: a loaded pipeline. prompts: all the prompts of the batch.
        out: output folder, or a .wav/.flac file path (output i > 0 then gets `-<i+1>` after the stem).
        seed: output i gets seed + i; None: random seeds, drawn per call (no resume then).
        call_kwargs: passed to every pipeline call (duration_s, num_inference_steps, ...).
        outputs_per_call: outputs per pipeline call (whole prompts; at least one prompt per call).
        manifest: the folder's manifest (`Manifest.open`): recorded prompts are skipped, finished clips recorded.
        progress: the bar over clips (None: shown on a terminal only).
        echo: called with each written audio path.
    Raises `BatchInterrupted` on Ctrl-C, after the clips finished so far are written and recorded.
    """
    num = check_int("num_per_prompt", num_per_prompt, 1, 64)
    per_call = max(1, check_int("outputs_per_call", outputs_per_call, 1, 4096) // num)
    if manifest is not None and seed is None:
        raise ValueError("a batch with a manifest needs a seed (a resume must redraw the same noise)")
    total = len(prompts) * num
    if seed is not None:
        check_batch_seed(seed, total)
    done = {p for p in range(len(prompts)) if manifest is not None and manifest.prompt_done(p, num)}
    result = BatchResult(total=total, skipped=len(done) * num, written=0)
    if len(prompts) > per_call:
        pipe.progress_bar = False  # the bar over clips below is the one shown
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=result.skipped, desc="generating", unit="clip", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        for start in range(0, len(prompts), per_call):
            for run in _missing_runs(range(start, min(start + per_call, len(prompts))), done):
                first = run[0] * num
                seeds = None if seed is None else batch_seeds(seed, first, len(run) * num)
                output = pipe([prompts[p] for p in run], num_waveforms_per_prompt=num, seed=seeds,
                              **dict(call_kwargs or {}))
                output.first_index = first
                with _sigint_deferred():  # the clips and their manifest lines land together
                    paths = output.save(out, format=format)
                    if manifest is not None:
                        manifest.record([(first + j, path.name) for j, path in enumerate(paths)])
                del output  # nothing of the audio outlives its call
                result.written += len(paths)
                bar.update(len(paths))
                for path in paths:
                    if echo is not None:
                        echo(path)
    except KeyboardInterrupt:
        raise BatchInterrupted(result.skipped + result.written, total, Path(out)) from None
    finally:
        bar.close()
    return result


def _missing_runs(prompt_indices: range, done: set[int]) -> Iterator[list[int]]:
    """The prompts of one call that are not done, as runs of consecutive indices (one call each; only a
    crash between two clips of a call leaves a call partly done)."""
    run: list[int] = []
    for p in prompt_indices:
        if p in done:
            if run:
                yield run
            run = []
        else:
            run.append(p)
    if run:
        yield run


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then raise it: a call's clips are recorded whole.
    Only the main thread receives signals, and only Python's own handler turns them into KeyboardInterrupt (a
    process started with SIGINT ignored keeps ignoring it); elsewhere this does nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
