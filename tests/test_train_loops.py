"""The VAE and vocoder training loops: bit-exact resume on CPU, the CLI, run-folder contents, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from soundsmith.train.checkpoint import latest_checkpoint
from soundsmith.train.config import load_config
from train_helpers import TINY_VAE, TINY_VOCODER, write_config, write_corpus

from soundsmith.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP's spinning makes
    two threads many times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _train(component: str):
    from soundsmith.train.components import COMPONENTS

    return COMPONENTS[component]()


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "state.safetensors"))


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # timings differ
    return [r for r in rows if any(k.startswith(("train/", "valid/")) for k in r)]


@pytest.mark.parametrize("component,tiny", [("vae", TINY_VAE), ("vocoder", TINY_VOCODER)])
def test_resume_is_bit_exact(tmp_path, corpus, component, tiny):
    """4 steps straight == 2 steps, then resume, then 2 more: every tensor of the final checkpoint
    (weights, EMA, optimizer moments, RNG states) is identical, and so are the logged losses."""
    # one data worker in the VAE run: crops must not depend on which process reads them
    values = {**tiny, "num_samples": 0, "num_workers": 1 if component == "vae" else 0}
    config = write_config(tmp_path / "config.json", values)
    train = _train(component)
    train(config, corpus, tmp_path / "straight")
    train(config, corpus, tmp_path / "split", max_steps=2)
    assert latest_checkpoint(tmp_path / "split").name == "step-000000002"
    train(None, corpus, tmp_path / "split", resume=True)

    straight, split = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    assert straight.keys() == split.keys()
    assert any(k.startswith("ema/") for k in straight) and any(k.startswith("rng/") for k in straight)
    if component == "vocoder":  # a GAN: both models, both optimizers
        assert {k.split("/")[0] for k in straight} >= {"generator", "discriminator", "opt_g", "opt_d", "ema"}
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    assert _train_rows(tmp_path / "straight") == _train_rows(tmp_path / "split")
    # the exports (EMA weights, fp16) match too
    a = load_file(str(tmp_path / "straight" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "export" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_run_folder_and_cli(tmp_path, corpus):
    """`soundsmith train vae ... --max-steps 2`: config, metrics, TensorBoard, samples, checkpoint, export."""
    config = write_config(tmp_path / "vae.json", TINY_VAE)
    run = tmp_path / "run"
    assert main(["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(run),
                 "--max-steps", "2"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == TINY_VAE["model"] and saved["max_steps"] == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert any("valid/l1" in r for r in rows) and any("scaling_factor" in r for r in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.suffix for p in (run / "samples" / "step-000000002").iterdir()} >= {".png", ".wav"}
    assert latest_checkpoint(run).name == "step-000000002"

    from soundsmith.codecs.mel_vae import MelVAE

    vae = MelVAE.from_pretrained(run / "export")
    scale = next(r["scaling_factor"] for r in rows if "scaling_factor" in r)
    assert vae.config.scaling_factor == pytest.approx(scale) and scale > 0
    assert vae.config.block_out_channels == (8, 16)


def test_vocoder_export_loads(tmp_path, corpus):
    config = write_config(tmp_path / "voc.json", {**TINY_VOCODER, "num_samples": 1})
    run = tmp_path / "run"
    assert main(["train", "vocoder", "--config", str(config), "--data", str(corpus), "--out", str(run),
                 "--max-steps", "1"]) == 0
    from soundsmith.codecs.vocoder import Vocoder

    vocoder = Vocoder.from_pretrained(run / "export")
    assert vocoder(torch.zeros(1, 16, 10)).shape == (1, 1600)
    assert (run / "samples" / "step-000000001" / "clip0.wav").is_file()


@pytest.mark.parametrize("values,needle", [
    ({"kl_weigth": 1e-3}, "unknown key 'kl_weigth' for VAETrainConfig (did you mean 'kl_weight'?)"),
    ({"lr": -1.0}, "field 'lr' must be in (0, 1], got -1.0"),
    ({"batch_size": 1.5}, "field 'batch_size' must be an integer, got 1.5"),
    ({"schedule": "steep"}, "field 'schedule' must be one of 'constant', 'cosine', 'linear', got 'steep'"),
    ({"model": {"n_mels": 16, "bogus": 1}}, "field 'model': MelVAEConfig: unknown field 'bogus'"),
])
def test_bad_config_is_one_line(tmp_path, corpus, capsys, values, needle):
    config = write_config(tmp_path / "bad.json", {**TINY_VAE, **values})
    assert main(["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("soundsmith: error: ")
    assert str(config) in err and needle in err, err


def test_run_folder_mistakes(tmp_path, corpus, capsys):
    config = write_config(tmp_path / "vae.json", TINY_VAE)
    args = ["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "r")]
    assert main([*args, "--resume"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert main([*args, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(args) == 2  # would overwrite the run
    assert "already holds checkpoints; pass --resume" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "vae", "--config", str(config), "--data", str(empty), "--out", str(tmp_path / "r2")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()  # the data is checked before the run folder is made


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("soundsmith: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["missing corpus", "no train split", "fewer clips than a batch"])
def test_a_training_that_fails_on_its_data_leaves_no_run_folder(tmp_path, capsys, case):
    config = write_config(tmp_path / "vae.json", TINY_VAE)  # batch_size 2
    data = tmp_path / "corpus"
    if case != "missing corpus":
        write_corpus(data, num_train=0 if case == "no train split" else 1)
    run = tmp_path / "run"
    assert main(["train", "vae", "--config", str(config), "--data", str(data), "--out", str(run)]) == 2
    err = _one_line_error(capsys)
    assert str(data) in err or "fewer than one batch" in err, err
    assert not run.exists()


def test_a_resume_that_changes_the_run_is_refused_unless_forced(tmp_path, corpus, capsys):
    """batch size, model shape, learning rate, data folder: refused in one line listing them; max_steps may
    change (it extends the run); --force-change goes on and logs the change with its step."""
    config = write_config(tmp_path / "vae.json", {**TINY_VAE, "num_samples": 0, "lr": 3e-4})
    run = tmp_path / "run"
    assert main(["train", "vae", "--config", str(config), "--data", str(corpus), "--out", str(run),
                 "--max-steps", "1"]) == 0
    capsys.readouterr()
    resume = ["train", "vae", "--data", str(corpus), "--out", str(run), "--resume"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    wider = json.dumps({**TINY_VAE["model"], "block_out_channels": [8, 32]})
    assert main([*resume, "--set", "batch_size=4", "--set", "lr=1e-3", "--set", f"model={wider}"]) == 2
    err = _one_line_error(capsys)
    assert "--resume with settings that change the run: batch_size 2 -> 4, lr 0.0003 -> 0.001, " \
           "model.block_out_channels [8,16] -> [8,32]; " in err and "--force-change" in err, err
    other = write_corpus(tmp_path / "other")
    assert main(["train", "vae", "--data", str(other), "--out", str(run), "--resume"]) == 2
    assert f"data {corpus.resolve()} -> {other.resolve()}" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written
    assert latest_checkpoint(run).name == "step-000000001"

    assert main([*resume, "--set", "max_steps=6", "--max-steps", "2"]) == 0  # a longer run: no change to log
    assert not (run / "config_changes.jsonl").exists()
    assert main([*resume, "--set", "batch_size=4", "--force-change", "--max-steps", "3"]) == 0
    rows = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["forced"] is True
    assert rows[0]["changes"] == {"batch_size": {"old": 2, "new": 4}}
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4
    assert latest_checkpoint(run).name == "step-000000003"


def test_unknown_component(capsys, tmp_path):
    assert main(["train", "banana", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown component 'banana'; available:" in err and "vae, vocoder" in err


@pytest.mark.parametrize("component", ["vae", "vocoder"])
def test_default_configs_are_complete(component):
    """train/configs/*.json name every field, so the shipped recipe is explicit, and load cleanly."""
    if component == "vae":
        from soundsmith.train.train_vae import DEFAULT_CONFIG
        from soundsmith.train.train_vae import VAETrainConfig as cls
    else:
        from soundsmith.train.train_vocoder import DEFAULT_CONFIG
        from soundsmith.train.train_vocoder import VocoderTrainConfig as cls
    raw = json.loads(DEFAULT_CONFIG.read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(cls)}
    cfg = load_config(cls, DEFAULT_CONFIG)
    assert cfg.max_steps > 1000 and cfg.batch_size >= 8
