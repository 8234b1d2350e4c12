"""`soundsmith app`: run the Streamlit app headless and print where to open it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .models import ANY_FOLDER_ENV, MODEL_DIR_ENV, NOVELTY_INDEX_ENV, OUTPUT_DIR_ENV, default_output_dir

ENTRY = Path(__file__).resolve().parent / "streamlit_app.py"
TMP_ENV = "SOUNDSMITH_APP_TMP"  # where the app's sessions make their temporary folders
GRACE_S = 5.0  # after forwarding Ctrl+C / SIGTERM: how long streamlit gets to stop (and clean up) before a kill


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


def is_loopback(address: str) -> bool:
    """Whether only this machine can reach `address` (a host name other than localhost counts as reachable)."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_output_root(folder: Path) -> Path:
    """Create the output root if missing; a one-line OSError if it cannot hold clips."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out folder {folder} cannot be created ({err.strerror or err})") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"--out folder {folder} is not a writable folder")
    return folder.resolve()


@contextmanager
def stop_signals_interrupt() -> Iterator[list[int]]:
    """While inside: SIGTERM raises KeyboardInterrupt like Ctrl+C does (its default would end this process at
    once, leaving streamlit and its folders behind). Yields the list of stop signals received, newest last."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield received
        return

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_child(proc: subprocess.Popen, sig: int, grace_s: float = GRACE_S) -> None:
    """Forward `sig` to `proc`, give it `grace_s` seconds to exit on its own, then kill it. Another stop signal
    meanwhile kills it at once (a second Ctrl+C means "now")."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def serve(command: Sequence[str], env: dict[str, str], *, grace_s: float = GRACE_S) -> int:
    """Run `command` until it exits (its status) or this process gets Ctrl+C / SIGTERM (130): that signal is
    forwarded and the child gets `grace_s` seconds to stop before it is killed (streamlit stops its server and
    removes its sessions' folders at exit; a kill would skip that)."""
    proc: subprocess.Popen | None = None
    with stop_signals_interrupt() as received:
        try:
            proc = subprocess.Popen(list(command), env=env)
            return proc.wait()
        except KeyboardInterrupt:
            if proc is not None:
                stop_child(proc, received[-1] if received else signal.SIGINT, grace_s)
            return 130


def remove_quietly(folder: Path) -> None:
    """Delete `folder`; a Ctrl+C pressed meanwhile does not cut the deletion short."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def launch_app(*, port: int = 8501, model_dir: str | os.PathLike | None = None, address: str = "127.0.0.1",
               novelty_index: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               allow_any_folder: bool = False, grace_s: float = GRACE_S) -> int:
    """Run the app until Ctrl+C or SIGTERM. `model_dir`: the folder whose model folders the picker offers (and
    the only place a typed model folder may be, unless `allow_any_folder`); `novelty_index`: a training index
    folder or corpus folder (`soundsmith eval index DATA`) for the nearest-training-clip line of each result
    (default: the repository's standard corpus, if indexed); `out`: the output root that keeps the clips and the
    History (default: $SOUNDSMITH_APP_OUT, else outputs/app). The sessions' temporary folders (uploads, batches)
    live in one folder of this launcher, removed when the app stops, however streamlit ended."""
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
    # last check: it creates the folder, which a failed start should not leave behind
    root = check_output_root(Path(out).expanduser() if out is not None else default_output_dir())
    env[OUTPUT_DIR_ENV] = str(root)
    env.pop(ANY_FOLDER_ENV, None)  # only the flag opens the host's folders, never an inherited variable
    if allow_any_folder:
        env[ANY_FOLDER_ENV] = "1"
    host = f"[{address}]" if ":" in address else address
    if not is_loopback(address):
        print(f"soundsmith app: warning: serving on {address}, reachable from other machines, and the app has no "
              "authentication: anyone who reaches the port can generate, and see and delete the History",
              file=sys.stderr, flush=True)
    print(f"soundsmith app: open http://{host}:{port}  (Ctrl+C stops it); clips and History in {root}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="soundsmith-app-", dir=env.get(TMP_ENV) or None))
    env[TMP_ENV] = str(tmp)
    try:
        return serve(streamlit_command(port=port, address=address), env, grace_s=grace_s)
    except KeyboardInterrupt:  # a second Ctrl+C while stopping
        return 130
    finally:
        remove_quietly(tmp)
