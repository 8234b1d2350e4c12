"""`soundsmith app`, the launcher: it passes its flags to the app, warns when it serves other machines, and on
Ctrl+C / SIGTERM forwards the signal to streamlit, waits, only then kills, and leaves no `soundsmith-app-*`
folder behind. Each process test runs under a private TMPDIR, so it sees only its own folders."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_helpers import wait_until_serving
from soundsmith.app import launch
from soundsmith.app.models import ANY_FOLDER_ENV, OUTPUT_DIR_ENV

from soundsmith.cli import main

START_TIMEOUT_S = float(os.environ.get("SOUNDSMITH_APP_START_TIMEOUT", "300"))

# the launcher with a stand-in for streamlit (argv: child code, port, model dir, output root)
DRIVER = """
import sys
from soundsmith.app import launch
launch.streamlit_command = lambda **kw: [sys.executable, "-c", sys.argv[1]]
sys.exit(launch.launch_app(port=int(sys.argv[2]), model_dir=sys.argv[3], out=sys.argv[4], grace_s=1.0))
"""
# a child that makes a session folder where the app would, then ignores every polite stop
STUBBORN_CHILD = """
import os, signal, tempfile, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
folder = tempfile.mkdtemp(prefix="soundsmith-app-", dir=os.environ["SOUNDSMITH_APP_TMP"])
open(os.path.join(folder, "upload.wav"), "wb").close()
print("child", os.getpid(), flush=True)
time.sleep(120)
"""
# the app's own session folder (jobs.Workspace) in a process stopped by Ctrl+C, without the launcher
WORKSPACE_CHILD = """
import os, time
from soundsmith.app.jobs import Workspace
ws = Workspace(os.environ["SOUNDSMITH_APP_TMP"])
(ws.new_folder("upload") / "clip.wav").write_bytes(b"x")
print(ws.root, flush=True)
time.sleep(120)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_env(tmp: Path) -> dict[str, str]:
    """This environment without the app's variables, temporary files under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSMITH_APP")}
    return {**env, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def app_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("soundsmith-app-*"))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# ----------------------------------------------------------------------------------------- in-process


def test_is_loopback():
    assert all(launch.is_loopback(a) for a in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(launch.is_loopback(a) for a in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_flags_reach_the_app_and_a_public_address_warns(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_serve(command, env, **kwargs):
        seen.update(env=env, tmp_existed=Path(env["SOUNDSMITH_APP_TMP"]).is_dir())
        return 0

    monkeypatch.setattr(launch, "serve", fake_serve)
    monkeypatch.setenv("SOUNDSMITH_APP_TMP", str(tmp_path))
    monkeypatch.setenv(ANY_FOLDER_ENV, "1")  # inherited from the shell: only the flag counts
    models, out = tmp_path / "models", tmp_path / "out" / "app"
    models.mkdir()
    base = ["app", "--port", str(free_port()), "--model-dir", str(models), "--out", str(out)]
    assert main(base) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"clips and History in {out.resolve()}" in captured.out
    assert ANY_FOLDER_ENV not in seen["env"] and seen["env"][OUTPUT_DIR_ENV] == str(out.resolve()) and out.is_dir()
    # the sessions' folders live in one folder of the launcher, removed when the app has stopped
    assert seen["tmp_existed"] and not Path(seen["env"]["SOUNDSMITH_APP_TMP"]).exists()
    assert Path(seen["env"]["SOUNDSMITH_APP_TMP"]).parent == tmp_path
    assert main([*base, "--address", "0.0.0.0", "--allow-any-folder"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("soundsmith app: warning: serving on 0.0.0.0, reachable from other "
                                               "machines, and the app has no authentication")
    assert seen["env"][ANY_FOLDER_ENV] == "1"
    (tmp_path / "a-file").write_text("x")
    assert main([*base[:-1], str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"soundsmith: error: --out folder {tmp_path / 'a-file'} cannot be")


# ------------------------------------------------------------------------------------------ processes


def test_sigterm_is_forwarded_then_a_stubborn_child_is_killed_and_its_folders_removed(tmp_path):
    env = private_env(tmp_path)
    (tmp_path / "models").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, STUBBORN_CHILD, str(free_port()), str(tmp_path / "models"),
                             str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        child = int(next(line for line in lines if line.startswith("child")).split()[1])
        (launcher_folder,) = app_folders(tmp_path)
        assert len(app_folders(launcher_folder)) == 1  # the child's session folder, inside the launcher's
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        assert time.monotonic() - start >= 1.0  # it waited the grace period before the kill
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert gone(child) and app_folders(tmp_path) == []


def test_the_app_removes_its_session_folder_on_ctrl_c(tmp_path):
    env = {**private_env(tmp_path), "SOUNDSMITH_APP_TMP": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", WORKSPACE_CHILD], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        root = Path(proc.stdout.readline().strip())
        assert root.parent == tmp_path and (root / "upload-001" / "clip.wav").is_file()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert app_folders(tmp_path) == []


def test_ctrl_c_stops_streamlit_and_leaves_no_temp_folder(tmp_path):
    pytest.importorskip("streamlit")
    tmp = tmp_path / "tmp"
    (tmp_path / "models").mkdir()
    tmp.mkdir()
    port = free_port()
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "soundsmith.cli", "app", "--port", str(port), "--model-dir",
                                 str(tmp_path / "models"), "--out", str(tmp_path / "out")], env=private_env(tmp),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(proc, port, log_path, START_TIMEOUT_S)
        (streamlit,) = children(proc.pid)
        assert len(app_folders(tmp)) == 1  # the launcher's folder for the sessions' uploads and batches
        proc.send_signal(signal.SIGINT)  # to the launcher alone: it must pass it on
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert gone(streamlit) and app_folders(tmp) == []
    assert "Traceback" not in log_path.read_text()
