"""The package version, read from the installed distribution's metadata (pyproject.toml's `version`)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("soundsmith")
except metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
    __version__ = "0.0.0+unknown"
