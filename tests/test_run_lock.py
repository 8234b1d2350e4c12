"""Run folders owned by one process: the lock of `train`, `eval run` and `data synth` output folders.

A second process into a locked folder is refused at once in one line naming the owner; a lock file left
by a killed process does not block; a lock file naming a live process that does not hold the flock is
reported; `--out x.mp3` or an existing file is refused without creating anything.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from soundsmith.core.run_lock import (
    LOCK_NAME,
    FolderInUseError,
    acquire_folder_lock,
    check_folder_free,
    folder_lock,
    lock_until_return,
    releases_folder_locks,
)
from soundsmith.train.checkpoint import latest_checkpoint
from train_helpers import TINY_VAE, write_config, write_corpus

from soundsmith.cli import main

HOST = socket.gethostname()
# holds the lock of argv[1] until its stdin closes
HOLDER = ("import sys\nfrom soundsmith.core.run_lock import folder_lock\nwith folder_lock(sys.argv[1]):\n"
          "    print('locked', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@contextmanager
def lock_held_by_another_process(folder: Path):
    """The folder's lock, held by a child process; yields its PID."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("soundsmith: error: ") and "Traceback" not in err, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its PID names no process now
    return proc.pid


def _write_lock(folder: Path, pid: int, host: str = HOST, started: float | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host, "started": time.time() if started is None else started,
             "started_at": "earlier"}
    (folder / LOCK_NAME).write_text(json.dumps(owner) + "\n")


def _commands(corpus: Path, config: Path, prompts: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(out), "--max-steps", "1"],
        "data synth": ["data", "synth", "--out", str(out), "--num-clips", "2", "--clip-seconds", "0.5",
                       "--sample-rate", "8000"],
        "eval run": ["eval", "run", "--prompts", str(prompts), "--out", str(out), "--metrics", "clap",
                     "--model", str(out.parent / "no-model")],
    }


@pytest.fixture
def inputs(tmp_path, corpus):
    config = write_config(tmp_path / "vae.json", {**TINY_VAE, "num_samples": 0})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "rain on a tin roof"}) + "\n")
    return corpus, config, prompts


# ------------------------------------------------------------------------------------- the lock itself


def test_the_lock_names_its_owner_refuses_others_and_goes_away(tmp_path):
    with folder_lock(tmp_path) as lock:
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == HOST and owner["started"] <= time.time()
        for attempt in (check_folder_free, acquire_folder_lock):  # refused even in this process
            with pytest.raises(FolderInUseError, match=f"{tmp_path} is in use by PID {os.getpid()} on {HOST}"):
                attempt(tmp_path)
        assert lock.held
    assert not (tmp_path / LOCK_NAME).exists()
    acquire_folder_lock(tmp_path).release()  # free again


def test_locks_taken_inside_a_decorated_function_are_released_when_it_raises(tmp_path):
    @releases_folder_locks
    def work():
        lock_until_return(tmp_path)
        with pytest.raises(FolderInUseError):
            acquire_folder_lock(tmp_path)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        work()
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="releases_folder_locks"):
        lock_until_return(tmp_path)  # outside such a function nothing would release it


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(tmp_path, pid)
    with caplog.at_level(logging.WARNING), folder_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock of PID {pid}" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_owner_that_does_not_hold_the_flock_is_reported(tmp_path):
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        time.sleep(0.05)
        _write_lock(tmp_path, sleeper.pid)  # written after it started: it may be the owner
        for attempt in (check_folder_free, acquire_folder_lock):  # the early check says the same
            with pytest.raises(FolderInUseError) as err:
                attempt(tmp_path)
            message = str(err.value)
            assert f"names PID {sleeper.pid} on this host" in message and "does not hold the lock" in message
            assert f"delete {tmp_path / LOCK_NAME}" in message
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == sleeper.pid  # left as it was
        # its PID reused by a process younger than the lock: stale
        _write_lock(tmp_path, sleeper.pid, started=time.time() - 3600)
        acquire_folder_lock(tmp_path).release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_owner_on_another_host_is_decided_by_the_flock(tmp_path, caplog):
    _write_lock(tmp_path, 12345, host="another-host")
    with caplog.at_level(logging.WARNING), folder_lock(tmp_path):
        pass
    assert "stale lock of PID 12345 on another-host" in caplog.text


# -------------------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("command", ["train", "data synth", "eval run"])
def test_a_second_process_into_a_locked_folder_is_refused_in_one_line(tmp_path, inputs, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    with lock_held_by_another_process(out) as pid:
        before = _tree(out)
        assert main(_commands(*inputs, out)[command]) == 2
        err = _one_line_error(capsys)
        assert f"{out} is in use by PID {pid} on {HOST}" in err and "choose another --out" in err, err
        assert _tree(out) == before  # nothing written


@pytest.mark.parametrize("command", ["train", "data synth", "eval run"])
def test_out_naming_a_file_is_refused_and_nothing_is_created(tmp_path, inputs, capsys, command):
    mp3 = tmp_path / "x.mp3"
    assert main(_commands(*inputs, mp3)[command]) == 2
    assert "looks like an audio file name; give a folder" in _one_line_error(capsys)
    assert not mp3.exists()
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert main(_commands(*inputs, existing)[command]) == 2
    assert f"--out {existing} is a file; give a folder" in _one_line_error(capsys)
    assert existing.read_text() == "keep me"


def test_two_concurrent_trainings_the_second_is_refused_and_a_killed_ones_lock_does_not_block(
        tmp_path, corpus, capsys, caplog):
    """A real training in a child process holds the run folder; a second `train` into it (fresh or --resume)
    is refused in one line while it runs. Killed with SIGKILL, it leaves its lock file behind, and
    `--resume` takes the run over."""
    config = write_config(tmp_path / "vae.json", {**TINY_VAE, "max_steps": 100_000, "save_every": 1,
                                                  "eval_every": 100_000, "num_samples": 0, "scale_batches": 1})
    run = tmp_path / "run"
    args = ["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(run)]
    first = subprocess.Popen([sys.executable, "-m", "soundsmith.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        while latest_checkpoint(run) is None:  # running: it has trained and saved a step
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first training did not save a checkpoint in time"
            time.sleep(0.5)
        for extra in ([], ["--resume"]):
            before = (run / "config.json").read_bytes()
            assert main([*args, *extra, "--max-steps", "1"]) == 2
            err = _one_line_error(capsys)
            assert f"{run} is in use by PID {first.pid} on {HOST}" in err, err
            assert (run / "config.json").read_bytes() == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid  # a kill -9 leaves the file
    step = int(latest_checkpoint(run).name.split("-")[1])
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--resume", "--max-steps", str(step + 1)]) == 0
    assert f"taking over the stale lock of PID {first.pid}" in caplog.text
    assert latest_checkpoint(run).name == f"step-{step + 1:09d}"
    assert not (run / LOCK_NAME).exists()  # released at the end
