"""The RVQ codec training loop: a 2-step smoke run through the CLI, bit-exact resume, the export loading
through `NeuralCodec` and `soundsmith eval codec`, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from soundsmith.codecs.neural_codec import NeuralCodec
from soundsmith.train.checkpoint import latest_checkpoint
from train_helpers import write_config, write_corpus

from soundsmith.cli import main

# 16 kHz, hop 320: crops of 8 frames; 3 levels of 16 codes; a 2-scale discriminator of 2-4 filters
TINY_CODEC = {"max_steps": 4, "batch_size": 2, "crop_seconds": 0.16, "log_every": 1, "eval_every": 2,
              "save_every": 2, "num_valid_clips": 2, "valid_seconds": 0.16, "num_samples": 1, "num_workers": 0,
              "keep_last": 5, "mel_scales": [64, 256], "disc_n_ffts": [128, 64], "disc_filters": 2,
              "disc_max_filters": 4, "disc_clips": 1, "disc_start_step": 1, "vq_warmup_steps": 1,
              "kmeans_batches": 2, "valid_levels": 2,
              "model": {"num_filters": 2, "hidden_size": 4, "n_levels": 3, "codebook_size": 16, "kmeans_iters": 2,
                        "quantizer_dropout": 1.0}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), num_train=6, num_valid=2, seconds=0.32)


def _train():
    from soundsmith.train.components import COMPONENTS

    return COMPONENTS["codec"]()


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_cli_smoke_run_and_export(tmp_path, corpus):
    """`soundsmith train codec ... --max-steps 2`: run folder, a quantized step after the warm-up, an
    fp16 export that loads and that `soundsmith eval codec` scores."""
    config = write_config(tmp_path / "codec.json", TINY_CODEC)
    run = tmp_path / "run"
    assert main(["train", "codec", "--config", str(config), "--data", str(corpus), "--out", str(run),
                 "--max-steps", "2"]) == 0
    rows = _rows(run)
    train_rows = [r for r in rows if "train/loss_g" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert "train/perplexity" not in train_rows[0] and train_rows[1]["train/perplexity"] >= 1  # warm-up, then VQ
    assert "train/loss_d" in train_rows[1] and "train/loss_d" not in train_rows[0]  # disc_start_step = 1
    assert any("valid/mel_l3" in r and "valid/mel_l2" in r for r in rows)
    assert {p.suffix for p in (run / "samples" / "step-000000002").iterdir()} >= {".png", ".wav"}
    assert latest_checkpoint(run).name == "step-000000002"
    weights = load_file(str(run / "export" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())
    codec = NeuralCodec.from_pretrained(run / "export")
    assert codec.max_levels == 3 and float(codec.quantizer.layers[2].codebook.inited) == 1.0
    assert main(["eval", "codec", "--model", str(run / "export"), "--data", str(corpus), "--split", "valid"]) == 0


def test_resume_is_bit_exact(tmp_path, corpus):
    """4 steps straight == 2 steps, then resume, then 2 more: codec weights and codebooks, discriminator,
    optimizers and RNG states identical; the same losses logged."""
    config = write_config(tmp_path / "config.json", {**TINY_CODEC, "num_samples": 0})
    train = _train()
    train(config, corpus, tmp_path / "straight")
    train(config, corpus, tmp_path / "split", max_steps=2)
    train(None, corpus, tmp_path / "split", resume=True)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "state.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "state.safetensors"))
    assert a.keys() == b.keys()
    assert {k.split("/")[0] for k in a} >= {"codec", "discriminator", "opt_g", "opt_d", "rng"}
    assert any("codebook.embed" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "split")


@pytest.mark.parametrize("change, match", [
    ({"crop_seconds": 0.15}, "whole number of code frames"),
    ({"valid_levels": 4}, r"valid_levels' must be in \[1, 3\]"),
    ({"model": {"n_levels": 0}}, "n_levels must be >= 1"),
    ({"disc_n_ffts": [100]}, "powers of 2"),
])
def test_config_errors(tmp_path, corpus, change, match):
    config = write_config(tmp_path / "bad.json", {**TINY_CODEC, **change})
    with pytest.raises(ValueError, match=match) as err:
        _train()(config, corpus, tmp_path / "run")
    assert "\n" not in str(err.value)
