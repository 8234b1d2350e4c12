"""The shared training pieces: checkpoints (round trip, atomicity, keep-last-K, broken files), the
resumable data order, configs, LR schedules, EMA and the metrics log."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from soundsmith.train import checkpoint as ckpt_mod
from soundsmith.train.checkpoint import (
    CheckpointError,
    ResumableSampler,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from soundsmith.train.config import bounded, check_ranges, load_config, save_config
from soundsmith.train.ema import EMA
from soundsmith.train.metrics_log import MetricsLogger
from soundsmith.train.schedules import lr_multiplier, make_scheduler
from torch import nn


def _parts(seed: int = 0, width: int = 8) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    sched = make_scheduler(opt, kind="cosine", warmup_steps=2, total_steps=10, min_ratio=0.1)
    return {"model": model, "optimizer": opt, "scheduler": sched, "ema": EMA(model, 0.9)}


def _step(parts: dict) -> None:
    loss = parts["model"](torch.randn(3, 4)).square().mean()
    loss.backward()
    parts["optimizer"].step()
    parts["scheduler"].step()
    parts["optimizer"].zero_grad()
    parts["ema"].update(parts["model"])


def test_round_trip_restores_everything(tmp_path):
    a = _parts()
    for _ in range(3):
        _step(a)
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    folder = save_checkpoint(tmp_path, 3, a, data_position={"batches": 3, "epoch": 0}, extra={"note": "x"})
    expected_draws = (random.random(), np.random.rand(), torch.rand(2))
    for _ in range(2):
        _step(a)

    b = _parts(seed=1)  # different weights, fresh optimizer state
    meta = load_checkpoint(folder, b)
    assert meta["step"] == 3 and meta["data_position"]["batches"] == 3 and meta["extra"] == {"note": "x"}
    assert (random.random(), np.random.rand()) == expected_draws[:2] and torch.equal(torch.rand(2), expected_draws[2])
    # the two runs now continue identically
    c = _parts(seed=2)
    load_checkpoint(folder, c)
    for parts in (b, c):
        torch.manual_seed(0)
        for _ in range(2):
            _step(parts)
    for key, value in b["model"].state_dict().items():
        assert torch.equal(value, c["model"].state_dict()[key])
    assert b["scheduler"].get_last_lr() == c["scheduler"].get_last_lr()
    assert b["optimizer"].state_dict()["param_groups"][0]["betas"] == (0.8, 0.99)  # tuples come back as tuples
    assert torch.equal(b["ema"].shadow["0.weight"], c["ema"].shadow["0.weight"])


def test_no_pickle_anywhere(tmp_path):
    folder = save_checkpoint(tmp_path, 1, _parts())
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "state.safetensors"]
    json.loads((folder / "checkpoint.json").read_text())


def test_keep_last_k(tmp_path):
    parts = _parts()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, parts, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000004", "step-000000005"]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, 6, parts, keep_last=0)


def test_saving_a_step_again_replaces_it(tmp_path):
    parts = _parts()
    save_checkpoint(tmp_path, 1, parts)
    _step(parts)
    save_checkpoint(tmp_path, 1, parts)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000000001"]
    fresh = _parts(seed=3)
    load_checkpoint(latest_checkpoint(tmp_path), fresh)
    assert torch.equal(fresh["model"][0].weight, parts["model"][0].weight)


def test_failure_mid_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    parts = _parts()
    save_checkpoint(tmp_path, 1, parts)
    before = (latest_checkpoint(tmp_path) / "state.safetensors").read_bytes()

    def write_half_then_die(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", write_half_then_die)
    _step(parts)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, parts)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000001"]
    assert (latest_checkpoint(tmp_path) / "state.safetensors").read_bytes() == before
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(latest_checkpoint(tmp_path), _parts())["step"] == 1


def test_kill_at_any_moment_keeps_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that saves checkpoints back to back: the newest complete one always loads,
    and the leftover temporary folder is ignored, then cleaned by the next save."""
    script = textwrap.dedent(f"""
        import sys, torch
        from torch import nn
        from soundsmith.train.checkpoint import save_checkpoint
        model = nn.Linear(512, 512)
        step = 0
        while True:
            step += 1
            save_checkpoint({str(tmp_path)!r}, step, {{"model": model}}, keep_last=2)
            if step == 1:
                print("saved", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = latest_checkpoint(tmp_path)
    assert load_checkpoint(latest, {"model": nn.Linear(512, 512)}, restore_rng=False)["step"] >= 1
    save_checkpoint(tmp_path, 10_000, {"model": nn.Linear(512, 512)}, keep_last=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_corrupt_and_truncated_checkpoints_name_the_file(tmp_path):
    folder = save_checkpoint(tmp_path, 1, _parts())
    state = folder / "state.safetensors"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{state}: truncated or corrupt checkpoint"):
        load_checkpoint(folder, _parts())
    state.write_bytes(b"\xff" * len(data))  # same size, garbage header
    with pytest.raises(CheckpointError, match=rf"{state}: corrupt or truncated checkpoint"):
        load_checkpoint(folder, _parts())
    meta = folder / "checkpoint.json"
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(CheckpointError, match=rf"{meta}: corrupt or truncated checkpoint metadata"):
        load_checkpoint(folder, _parts())
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint file missing: .*checkpoint.json"):
        load_checkpoint(folder, _parts())


def test_wrong_architecture_names_the_key_and_loads_nothing(tmp_path):
    folder = save_checkpoint(tmp_path, 1, _parts())
    wider = _parts(width=16)
    before = {k: v.clone() for k, v in wider["model"].state_dict().items()}
    with pytest.raises(CheckpointError, match=r"key 'model.0.weight' has shape \(8, 4\), the model has \(16, 4\)"):
        load_checkpoint(folder, wider)
    assert all(torch.equal(before[k], v) for k, v in wider["model"].state_dict().items())

    deeper = {"model": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))}
    with pytest.raises(CheckpointError, match=r"missing key 'model.3.weight' \(and 1 more\)"):
        load_checkpoint(folder, deeper, restore_rng=False)
    with pytest.raises(CheckpointError, match="missing object 'discriminator'"):
        load_checkpoint(folder, {"discriminator": nn.Linear(1, 1)}, restore_rng=False)
    # one-line messages
    try:
        load_checkpoint(folder, deeper, restore_rng=False)
    except CheckpointError as err:
        assert "\n" not in str(err) and str(folder / "state.safetensors") in str(err)


def test_sampler_resumes_the_same_order_and_shards_processes():
    full = ResumableSampler(10, 2, seed=3)
    it = iter(full)
    order = [next(it) for _ in range(12)]  # 5 batches per epoch: crosses two epoch boundaries
    resumed = iter(ResumableSampler(10, 2, seed=3, start=7))
    assert [next(resumed) for _ in range(5)] == order[7:12]
    assert [e for batch in order[:5] for _, e in batch] == [0] * 10 and order[5][0][1] == 1
    assert sorted(i for batch in order[:5] for i, _ in batch) == list(range(10))  # one epoch = each clip once
    assert order[:5] != order[5:10]  # reshuffled per epoch
    ranks = [iter(ResumableSampler(10, 2, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    first = [next(r) for r in ranks]
    assert first[0] + first[1] == [(i, 0) for i in full.order(0)[:4].tolist()]
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableSampler(3, 2, num_replicas=2)


@dataclass
class _Cfg:
    lr: float = bounded(1e-3, 0.0, 1.0, low_open=True)
    steps: int = bounded(10, 1)
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float | None = None
    kind: str = bounded("cosine", choices=("cosine", "constant"))

    def __post_init__(self) -> None:
        check_ranges(self)


def test_config_round_trip_overrides_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.5, "betas": [0.8, 0.9], "steps": 20.0}))
    cfg = load_config(_Cfg, path, overrides=["clip=1", "kind=constant"])
    assert cfg == _Cfg(lr=0.5, steps=20, betas=(0.8, 0.9), clip=1.0, kind="constant")
    save_config(cfg, tmp_path / "saved.json")
    assert load_config(_Cfg, tmp_path / "saved.json") == cfg
    for content, needle in [
        ({"stepz": 3}, f"{path}: unknown key 'stepz' for _Cfg (did you mean 'steps'?)"),
        ({"lr": 2.0}, f"{path}: field 'lr' must be in (0, 1], got 2.0"),
        ({"steps": 0}, f"{path}: field 'steps' must be in [1, inf], got 0"),
        ({"steps": "ten"}, f"{path}: field 'steps' must be an integer, got 'ten'"),
        ({"betas": [0.9]}, f"{path}: field 'betas' must be a list of 2 values"),
        ({"kind": "warm"}, f"{path}: field 'kind' must be one of 'cosine', 'constant', got 'warm'"),
    ]:
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError) as err:
            load_config(_Cfg, path)
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="override: unknown key 'nope'"):
        load_config(_Cfg, None, overrides={"nope": 1})
    path.write_text("{broken")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        load_config(_Cfg, path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(_Cfg, tmp_path / "missing.json")


def test_schedules():
    f = lambda s, kind="cosine": lr_multiplier(s, kind=kind, warmup_steps=4, total_steps=14, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == 1.0 and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(99) == pytest.approx(0.1)
    assert f(9, "constant") == 1.0 and f(9, "linear") == pytest.approx(0.55)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, kind="cosine", warmup_steps=4, total_steps=14, min_ratio=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([f(s) for s in range(6)])
    with pytest.raises(ValueError, match="schedule must be one of"):
        make_scheduler(opt, kind="exp")


def test_ema():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    start = ema.shadow["weight"].clone()
    ema.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], 0.1 * start + 0.9)
    target = nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_metrics_log_drops_rows_after_the_resume_step(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": torch.tensor(1.0 / step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # torn by a kill
    MetricsLogger(tmp_path, resume_step=2, tensorboard=False).log(3, {"loss": 9.0})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 9.0)]
    MetricsLogger(tmp_path / "other", enabled=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_rng_state_is_json_and_tensors_only():
    state = ckpt_mod.capture_rng_state()
    tensors: dict = {}
    json.dumps(ckpt_mod._flatten(state, "rng", tensors))
    assert set(tensors) == {"rng/torch"}


def test_log_audio_takes_tensors_the_trainers_hold(tmp_path):
    # the trainers pass model outputs straight in: grad-tracking or bf16 tensors (on a GPU, CUDA ones,
    # which once crashed the end-of-run samples) must be copied to host memory, not viewed as numpy
    logger = MetricsLogger(tmp_path)
    wave = torch.linspace(-2, 2, 1600, requires_grad=True)
    logger.log_audio(1, "samples/grad", wave * 1.0, 16000)
    logger.log_audio(2, "samples/bf16", wave.detach().to(torch.bfloat16)[None], 16000)
    logger.close()
    assert list((tmp_path / "tensorboard").iterdir())
