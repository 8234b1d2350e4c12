"""A folder of tiny random models for the app tests: models/default-ldm and models/default-tokens (saved the way
the shipped defaults are), plus a component folder (a CLAP) that the picker must not offer."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "app" / "streamlit_app.py"
SR = 16_000
_BUILT: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """Build the folder once per process (a few CPU seconds) in a temporary directory removed at exit."""
    if "dir" not in _BUILT:
        import atexit

        import ldm_helpers
        import token_helpers
        from soundsmith.gen.text_encoder import SentenceEncoder

        root = Path(tempfile.mkdtemp(prefix="soundsmith-app-models-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        encoder = SentenceEncoder()  # the packaged MiniLM, offline; shared by both tiny CLAPs
        ldm = ldm_helpers.tiny_pipeline(encoder)
        ldm.save_pretrained(root / "default-ldm")
        token_helpers.tiny_pipeline(encoder).save_pretrained(root / "default-tokens")
        ldm.conditioner.model.save_pretrained(root / "clap")  # a component, not a pipeline
        _BUILT["dir"] = root
    return _BUILT["dir"]


def tiny_musicgen_dir() -> Path:
    """A tiny random transformers MusicGen folder, outside the model dir (the user types its path)."""
    if "musicgen" not in _BUILT:
        import atexit

        from musicgen_helpers import write_tiny_musicgen

        path = Path(tempfile.mkdtemp(prefix="soundsmith-app-musicgen-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _BUILT["musicgen"] = write_tiny_musicgen(path, max_length=120)
    return _BUILT["musicgen"]


def wav_bytes(seconds: float = 1.0, freq: float = 330.0, seed: int = 0) -> bytes:
    """A tone plus a little noise as 16-bit WAV bytes."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def app_env(tmp: Path) -> dict[str, str]:
    """Environment of an app run: the tiny models offered, the session folders and the output root (clips,
    History) under `tmp`."""
    return {"SOUNDSMITH_MODEL_DIR": str(tiny_model_dir()), "SOUNDSMITH_APP_TMP": str(tmp),
            "SOUNDSMITH_APP_OUT": str(tmp / "outputs"),
            "SOUNDSMITH_NOVELTY_INDEX": str(tmp / "no-index"),  # tests never read the machine's own corpus index
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def wait_until_serving(proc, port: int, log_path: Path, timeout_s: float) -> None:
    """Poll the streamlit health endpoint of `soundsmith app` started as `proc` until it answers "ok"; fail
    with the end of its log if it exits first or `timeout_s` passes."""
    import time
    import urllib.request

    import pytest

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"soundsmith app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the app did not answer in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
