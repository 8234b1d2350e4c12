"""soundsmith: text prompt -> audio, with a latent-diffusion and a token-hierarchy backend.

The package root holds only the version, the public re-exports and the CLI. Re-exports are
resolved lazily so that `import soundsmith` (and `soundsmith --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from soundsmith.core.version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "load_pipeline": "soundsmith.pipelines",
    "read_audio": "soundsmith.codecs.audio",
    "write_audio": "soundsmith.codecs.audio",
    "resample": "soundsmith.codecs.audio",
    "MelConfig": "soundsmith.codecs.mel",
    "MelSpectrogram": "soundsmith.codecs.mel",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'soundsmith' has no attribute {name!r}")
