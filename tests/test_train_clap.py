"""The CLAP training loop (train/train_clap.py): loss, bit-exact resume, export, CLI, bad config."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from soundsmith.codecs.audio import write_audio
from soundsmith.gen.clap import SoundsmithClap, load_clap
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.train.checkpoint import latest_checkpoint
from soundsmith.train.train_clap import clap_loss, spec_augment, train

SR = 16000
TINY = {"max_steps": 4, "batch_size": 4, "crop_seconds": 0.5, "warmup_steps": 1, "log_every": 1, "eval_every": 2,
        "save_every": 2, "keep_last": 5, "num_valid_clips": 3, "num_workers": 0, "time_mask_frames": 5,
        "freq_mask_bins": 4,
        "model": {"embed_dim": 16, "stem_channels": 4, "conv_channels": [8], "frame_dim": 8,
                  "temporal_dilations": [2], "projection_hidden": 16}}
LABELS = [
    {"domain": "sfx", "classes": ["rain"], "intensity": "light", "pitch": "low", "distance": "near"},
    {"domain": "sfx", "classes": ["siren", "dog barking"], "intensity": "heavy", "pitch": "high", "distance": "far"},
    {"domain": "music", "instruments": ["piano", "bass"], "tempo_bpm": 96.0, "key": "D", "mode": "minor",
     "time_signature": "3/4", "style": "waltz", "loudness": "soft"},
    {"domain": "speech", "language": "de", "language_name": "German", "voice": "female", "rate_wpm": 150,
     "rate": "normal", "text": "Guten Morgen"},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 8), ("valid", 3)):
        (root / split).mkdir()
        for i in range(count):
            name = f"{split}/{i:06d}.wav"
            write_audio(root / name, (0.1 * rng.standard_normal((1, SR))).astype(np.float32), SR)
            labels = {**LABELS[i % len(LABELS)], "augmentation": {"reverb": None, "gain_db": 0.0, "noise": None}}
            rows.append({"file_name": name, "caption": "x", "domain": labels["domain"], "labels": labels,
                         "duration": 1.0, "sample_rate": SR, "seed": i, "split": split})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_clap_loss():
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    perfect = clap_loss(e, e, torch.tensor(100.0))
    assert perfect < clap_loss(e, e[[1, 0, 2, 3]], torch.tensor(100.0))
    # label-aware: masking the pair (0, 1) removes it from both softmaxes
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    text = e.clone()
    text[1] = e[0]  # clip 1's caption matches clip 0 as well as its own
    assert clap_loss(e, text, torch.tensor(10.0), same) < clap_loss(e, text, torch.tensor(10.0))
    logits_masked = clap_loss(e, e, torch.tensor(10.0), same)
    assert torch.isfinite(logits_masked)


def test_spec_augment_masks_with_the_mean():
    torch.manual_seed(0)
    mel = torch.randn(2, 16, 50)
    out = spec_augment(mel, time_masks=2, time_width=10, freq_masks=1, freq_width=4)
    changed = out != mel
    assert changed.any() and out.shape == mel.shape
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)
    assert torch.equal(out[changed], fill[changed])


def test_resume_is_bit_exact_and_export_loads(tmp_path, corpus, encoder):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    train(config, corpus, tmp_path / "straight", text_encoder=encoder)
    train(config, corpus, tmp_path / "split", max_steps=2, text_encoder=encoder)
    assert latest_checkpoint(tmp_path / "split").name == "step-000000002"
    train(None, corpus, tmp_path / "split", resume=True, text_encoder=encoder)
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "state.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "split") / "state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("ema/") for k in a)
    assert not any("text_encoder" in k for k in a)  # the frozen MiniLM is never checkpointed
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any("valid/t2a_R@10" in r for r in rows) and any("valid/zero_shot_sfx_class" in r for r in rows)
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)

    model = load_clap(tmp_path / "straight" / "export")
    assert isinstance(model, SoundsmithClap) and model.dim == 16
    assert model.embed_audio(np.zeros((1, SR), np.float32) + 0.01, SR).shape == (1, 16)


def test_cli_and_bad_config(tmp_path, corpus, capsys):
    from soundsmith.train.components import COMPONENTS

    from soundsmith.cli import main

    assert "clap" in COMPONENTS
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({**TINY, "batch_sise": 4}))
    assert main(["train", "clap", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key 'batch_sise'" in capsys.readouterr().err
    config.write_text(json.dumps({**TINY, "model": {"conv_chanels": [8]}}))
    assert main(["train", "clap", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    assert "unknown field 'conv_chanels'" in capsys.readouterr().err
