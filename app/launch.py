"""`soundsmith app`: run the Streamlit app headless and print where to open it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from .models import MODEL_DIR_ENV, NOVELTY_INDEX_ENV

ENTRY = Path(__file__).resolve().parent / "streamlit_app.py"


def streamlit_command(*, port: int = 8501, address: str = "127.0.0.1") -> list[str]:
    """The `streamlit run` command line: headless (no browser opened, no usage statistics), bound to `address`."""
    return [sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.headless", "true",
            "--server.address", address, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal",
            # a bug that escapes the pages' one-line errors shows its type only; the traceback goes to the console
            "--client.showErrorDetails", "type"]


def check_port(port: int, address: str) -> None:
    """One-line OSError if `address:port` cannot be bound (in use, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as err:
            raise OSError(f"cannot serve on {address}:{port} ({err.strerror or err}); pick another --port") from None


def launch_app(*, port: int = 8501, model_dir: str | os.PathLike | None = None, address: str = "127.0.0.1",
               novelty_index: str | os.PathLike | None = None) -> int:
    """Run the app until Ctrl+C. `model_dir`: the folder whose model folders the picker offers;
    `novelty_index`: a training index folder or corpus folder (`soundsmith eval index DATA`) for the
    nearest-training-clip line of each result (default: the repository's standard corpus, if indexed)."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        raise ValueError("the app needs streamlit: pip install 'soundsmith[app]'")
    env = dict(os.environ)
    if model_dir is not None:
        folder = Path(model_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--model-dir folder not found: {folder}")
        env[MODEL_DIR_ENV] = str(folder.resolve())
    if novelty_index is not None:
        from soundsmith.eval.novelty import resolve_index

        env[NOVELTY_INDEX_ENV] = str(resolve_index(novelty_index).path)  # fails here, in one line, if missing
    check_port(port, address)
    host = f"[{address}]" if ":" in address else address
    print(f"soundsmith app: open http://{host}:{port}  (Ctrl+C stops it)", flush=True)
    try:
        return subprocess.call(streamlit_command(port=port, address=address), env=env)
    except KeyboardInterrupt:
        return 130
