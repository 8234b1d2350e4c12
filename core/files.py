"""Files written whole or not at all, and JSON read with errors that name the file.

Writing is atomic: the text goes to a temporary name in the destination folder and is then renamed,
so a killed process never leaves a half-written file behind (a reader sees the old file or the new one).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut at `limit` characters (for messages that name a file)."""
    return " ".join(str(err).split())[:limit]


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Return the folder if it exists and is writable, else raise a one-line error naming it."""
    folder = Path(folder) if str(folder) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"output folder is not a folder: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder is not writable: {folder}")
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`; on any error (Ctrl-C
    included) the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    folder = check_writable_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically. numpy scalars/arrays and paths are converted."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object; FileNotFoundError / ValueError name the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({one_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """`folder/config.json` as a dict; FileNotFoundError / ValueError name the file."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in model folder {folder}")
    return read_json_object(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalar, without importing numpy here
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy array
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
