"""Prompt -> waveform. `load_pipeline(path)` reads a model folder's `config.json` and builds the
backend it names; each backend registers a zero-argument factory for its pipeline class below."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _backends() -> dict[str, Callable[[], type]]:
    # backend name (config.json "backend") -> factory returning the pipeline class; heavy imports
    # stay inside the factories. Filled by the backends as they land.
    return {}


PIPELINE_BACKENDS: dict[str, Callable[[], type]] = _backends()


def load_pipeline(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Load the pipeline saved in folder `path`, picking the backend from its `config.json`."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a soundsmith model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    backend = config.get("backend") if isinstance(config, dict) else None
    if backend not in PIPELINE_BACKENDS:
        known = ", ".join(sorted(PIPELINE_BACKENDS)) or "none installed yet"
        raise ValueError(f"{config_file}: field 'backend' is {backend!r}; known backends: {known}")
    return PIPELINE_BACKENDS[backend]().from_pretrained(path, **kwargs)
