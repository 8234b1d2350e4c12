"""A training run's folder: checked before any work, created and locked only when the run starts.

Every loop does, in this order:

    out, ckpt, config = resume_point(out, resume, config, DEFAULT_CONFIG)   # --out, --resume, busy folder
    cfg = load_config(...)
    run = RunFolder(out, cfg, data=data, resume=resume, checkpoint=ckpt, force_change=force_change)
    ...  # data, models: a mistake here leaves no folder behind
    run.open(accelerator)  # creates OUT, locks it until `train` returns, writes config.json and run.json

and its `train` is decorated with `@releases_folder_locks` (soundsmith.core.run_lock).

`RunFolder` refuses, in one line, a folder another process is using, a corpus with no training clips,
and a `--resume` whose settings change what the run trains (batch size, model shape, learning rate,
data folder...; `FREE_FIELDS` may change, `max_steps` among them, which extends a run). With
`--force-change` such a resume goes on and the change is appended to `OUT/config_changes.jsonl`
with the step it took effect at.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from soundsmith.core.files import write_json
from soundsmith.core.run_lock import (
    check_folder_free,
    check_output_dir_arg,
    lock_until_return,
    run_on_main_process,
)

from .checkpoint import META_FILE
from .config import config_to_dict, load_config, save_config

CHANGES_FILE = "config_changes.jsonl"
RUN_FILE = "run.json"  # what the run was started with besides its config: the data folder
# config fields a resume may change: step budgets (a longer run) and bookkeeping that trains nothing
FREE_FIELDS = frozenset({
    "max_steps", "ema_steps", "iters",
    "log_every", "eval_every", "save_every", "keep_last", "num_workers", "num_samples",
    "sample_prompts", "sample_steps", "sample_seconds", "cache_dir", "cache_batch", "encode_batch",
})


class RunFolder:
    """The checks of a run folder (at construction, read-only) and its creation (`open`).

    Args:
        out: the run folder (`--out`).
        cfg: the run's config dataclass, as this run will use it.
        data: the corpus folder (`--data`); its train split must hold clips.
        resume: this run continues the one in `out`.
        checkpoint: the checkpoint resumed from (its config is the one compared), or None.
        force_change: accept a resume whose settings change the run, and record the change.

    Raises (one-line messages): FolderInUseError, NotADirectoryError/ValueError for an `--out` naming a
    file, FileNotFoundError/ValueError for the data, ValueError for a resume that changes the run.
    """

    def __init__(self, out: str | os.PathLike, cfg: Any, *, data: str | os.PathLike, resume: bool = False,
                 checkpoint: str | os.PathLike | None = None, force_change: bool = False):
        self.out = check_output_dir_arg(out)
        self.cfg, self.data = cfg, Path(data)
        check_folder_free(self.out)
        check_training_data(self.data)
        self.step: int | None = None
        self.changes: dict[str, tuple[Any, Any]] = {}
        if resume:
            old, self.step = _previous_config(self.out, checkpoint)
            self.changes = meaningful_changes(old, config_to_dict(cfg))
            old_data, new_data = _previous_data(self.out), str(self.data.resolve())
            if old_data is not None and old_data != new_data:
                self.changes["data"] = (old_data, new_data)
            if self.changes and not force_change:
                raise ValueError(f"{self.out}: --resume with settings that change the run: "
                                 f"{describe_changes(self.changes)}; resume with the run's own settings, or pass "
                                 f"--force-change to go on with the new ones (recorded in {CHANGES_FILE})")

    def open(self, accelerator: Any = None) -> Path:
        """Create the folder, lock it until the decorated `train` returns, write config.json and run.json,
        and record a forced change. With `accelerate`, only the main process does (others wait for it)."""
        if accelerator is None:
            self._open()
        else:
            run_on_main_process(accelerator, self._open)
        return self.out

    def _open(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        lock_until_return(self.out)  # before anything is written into the folder
        save_config(self.cfg, self.out / "config.json")
        write_json(self.out / RUN_FILE, {"data": str(self.data.resolve())})
        if self.changes:
            record_changes(self.out, self.changes, self.step)


def refit_config(out: str | os.PathLike, resume: bool, config: str | os.PathLike | None, config_class: type,
                 overrides: Any, what: str) -> tuple[Path, Any]:
    """(run folder, config) of a closed-form fit (no optimizer state: `--resume` refits): an earlier run's export is
    refused without --resume, and a resumed run without --config reads its saved config.json."""
    from soundsmith.core.run_lock import check_output_dir_arg

    out = check_output_dir_arg(out)
    if not resume and (out / "export").exists():
        raise ValueError(f"{out} already holds a {what} run; pass --resume to refit it or choose another --out")
    if config is None:
        config = out / "config.json" if resume and (out / "config.json").is_file() else None
    return out, load_config(config_class, config, overrides)


def check_training_data(data: Path) -> None:
    """A one-line error unless `data` is a readable corpus with clips in its train split (a corpus
    without split labels counts as all train)."""
    from .datasets import read_records, select_split

    _, records = read_records(data)
    select_split(records, "train", data)


def meaningful_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs between two config dicts, `FREE_FIELDS` left out; the "model" dict is
    compared key by key ("model.n_mels"). Fields one side lacks (added to the code since) are skipped."""
    if old is None:
        return {}
    changes = {}
    for key, value in new.items():
        if key in FREE_FIELDS or key not in old:
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            for sub in sorted(set(value) | set(old[key])):
                if old[key].get(sub) != value.get(sub):
                    changes[f"{key}.{sub}"] = (old[key].get(sub), value.get(sub))
        elif old[key] != value:
            changes[key] = (old[key], value)
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())


def record_changes(out: Path, changes: dict[str, tuple[Any, Any]], step: int | None) -> Path:
    """Append one JSON line to OUT/config_changes.jsonl: when, at which step, old and new values."""
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "forced": True,
           "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()},
           "host": socket.gethostname(), "pid": os.getpid(), "command": " ".join(sys.argv)[:500]}
    path = out / CHANGES_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())  # the log of what was forced must survive a crash right after
    return path


def _previous_config(out: Path, checkpoint: str | os.PathLike | None) -> tuple[dict[str, Any] | None, int | None]:
    """The config the resumed weights were trained with (the checkpoint's copy, else OUT/config.json) and
    the checkpoint's step; (None, None) where neither can be read (the loop then reports the checkpoint)."""
    if checkpoint is not None:
        meta = _read_json(Path(checkpoint) / META_FILE)
        if isinstance(meta, dict):
            extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
            step = meta.get("step") if isinstance(meta.get("step"), int) else None
            if isinstance(extra.get("config"), dict):
                return extra["config"], step
            saved = _read_json(out / "config.json")
            return (saved if isinstance(saved, dict) else None), step
    saved = _read_json(out / "config.json")
    return (saved if isinstance(saved, dict) else None), None


def _previous_data(out: Path) -> str | None:
    saved = _read_json(out / RUN_FILE)
    return saved.get("data") if isinstance(saved, dict) and isinstance(saved.get("data"), str) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
