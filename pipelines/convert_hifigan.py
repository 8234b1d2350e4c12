"""Original HiFi-GAN generator checkpoints (jik876/hifi-gan layout) -> a soundsmith `Vocoder` folder.

A jik876 release is a folder with the generator file (`g_02500000`: a torch pickle of
`{"generator": state_dict}`) and the training `config.json` beside it; the key mapping lives in
codecs/jik876.py. The upsampling strides and dilations are not recoverable from tensor shapes, so the
config is read from `config.json` next to the checkpoint (or the file passed as `config`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from soundsmith.codecs.jik876 import config_from_jik876, generator_to_transformers
from soundsmith.codecs.vocoder import Vocoder
from soundsmith.core.weights import check_state_dict, read_state_dict

log = logging.getLogger(__name__)


def _find_generator(source: Path) -> Path:
    if source.is_file():
        return source
    if not source.is_dir():
        raise FileNotFoundError(f"HiFi-GAN checkpoint not found: {source}")
    candidates = sorted(p for p in source.iterdir() if p.is_file() and p.name.startswith("g_"))
    if not candidates:
        raise FileNotFoundError(f"no generator file (g_XXXXXXXX) in {source}")
    return candidates[-1]  # the latest step


def load_hifigan(source: str | os.PathLike, *, trust_pickle: bool = False,
                 config: str | os.PathLike | None = None) -> Vocoder:
    """A jik876 generator checkpoint (file, or the release folder) -> `Vocoder` (float32, eval mode)."""
    path = _find_generator(Path(source))
    config_path = Path(config) if config is not None else path.parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no HiFi-GAN config.json beside {path} (jik876 releases ship one; the "
                                "upsampling rates cannot be read from the weights)")
    try:
        raw_cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable JSON config ({' '.join(str(err).split())})") from None
    vocoder = Vocoder(config_from_jik876(raw_cfg, config_path))
    checkpoint = read_state_dict(path, trust_pickle=trust_pickle)
    if "generator" not in checkpoint:
        keys = ", ".join(list(checkpoint)[:5])
        raise ValueError(f"{path}: missing key 'generator' (a jik876 generator checkpoint; found: {keys})")
    state = generator_to_transformers(checkpoint["generator"], path)
    check_state_dict(vocoder.hifigan.state_dict(), state, f"{path} ['generator']", what="HiFi-GAN generator")
    vocoder.hifigan.load_state_dict(state, strict=True)
    return vocoder.eval()


def convert_hifigan(source: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                    config: str | os.PathLike | None = None) -> Path:
    """Convert a jik876 HiFi-GAN generator into a soundsmith `Vocoder` folder at `out`; returns `out`."""
    vocoder = load_hifigan(source, trust_pickle=trust_pickle, config=config)
    log.info("converted HiFi-GAN generator %s: %d parameters", source, vocoder.num_parameters())
    return vocoder.save_pretrained(out)
