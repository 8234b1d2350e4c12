"""Two CPU processes under `accelerate launch` (gloo): train, checkpoint, resume - how users scale out.

`accelerate launch --cpu --num_processes 2` starts a single process unless MPI spawns the others
(accelerate's simple launcher); `--multi_gpu` is accelerate's torchrun launcher, which also works
without GPUs: our loops ask for the CPU when CUDA is absent, and accelerate then picks gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file
from soundsmith.train.checkpoint import list_checkpoints
from train_helpers import TINY_VAE, write_config, write_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "soundsmith.cli", *args]
    # CPU even where a GPU exists: the test is about gloo and the checkpoint/resume path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", num_train=8)
    config = write_config(tmp_path / "vae.json", {**TINY_VAE, "num_samples": 0, "eval_every": 100,
                                                   "scale_batches": 1})
    run = tmp_path / "run"
    common = ["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(run)]

    first = _launch(*common, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["step-000000002"]
    meta = json.loads((list_checkpoints(run)[0] / "checkpoint.json").read_text())
    # one global batch = 2 processes x 2 clips; the 8 training clips make 2 global batches per epoch
    assert meta["num_processes"] == 2 and meta["data_position"] == {"batches": 2, "epoch": 1, "offset": 0, "seed": 0}
    state = load_file(str(list_checkpoints(run)[0] / "state.safetensors"))
    assert not torch.equal(state["rng/0/torch"], state["rng/1/torch"])  # each process keeps its own RNG

    second = _launch(*common, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run)] == ["step-000000002", "step-000000004"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert (run / "export" / "model.safetensors").is_file()
