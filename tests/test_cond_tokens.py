"""Conditioning tokens (gen/cond_tokens.py) and their training loop (train/train_cond_rvq.py)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from soundsmith.core.weights import weights_fingerprint
from soundsmith.gen.clap import ClapConfig, SoundsmithClap
from soundsmith.gen.cond_tokens import ConditioningQuantizer, ConditioningQuantizerConfig
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.train.train_cond_rvq import train
from train_helpers import write_config, write_corpus

from soundsmith.cli import main

SMALL = ConditioningQuantizerConfig(codebook_dim=16, n_levels=4, codebook_size=64, kmeans_iters=10)
TINY_CLAP = {"embed_dim": 16, "stem_channels": 4, "conv_channels": [8], "frame_dim": 8, "temporal_dilations": [2],
             "projection_hidden": 16}
TINY_RUN = {"max_steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "save_every": 2,
            "keep_last": 5, "crops_per_clip": 2, "crop_seconds": 0.25, "num_valid_clips": 3,
            "model": {"embed_dim": 16, "codebook_dim": 4, "n_levels": 3, "codebook_size": 8, "kmeans_iters": 5}}


def clustered_embeddings(n: int, seed: int = 0) -> torch.Tensor:
    """Unit vectors near one fixed 10-d subspace of the 512-d space (like a corpus's CLAP embeddings);
    `seed` draws other vectors from the same subspace."""
    basis = torch.randn(10, 512, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 10, generator=g) @ basis + 0.05 * torch.randn(n, 512, generator=g), dim=-1)


@pytest.fixture(scope="module")
def fitted() -> ConditioningQuantizer:
    torch.manual_seed(0)
    model = ConditioningQuantizer(SMALL)
    model.init_from_data_(clustered_embeddings(2000))
    return model.eval()


def test_tokenize_and_embed(fitted):
    held_out = clustered_embeddings(100, seed=1)  # same subspace, other vectors
    tokens = fitted.tokenize(held_out)
    assert tokens.shape == (100, 4) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    cosines = [(fitted.embed(tokens[:, :q]) * held_out).sum(-1).mean().item() for q in range(1, 5)]
    assert all(b > a for a, b in zip(cosines, cosines[1:])), cosines  # every level adds detail
    assert cosines[-1] > 0.9
    recon = fitted.embed(tokens)
    assert recon.shape == (100, 512) and torch.allclose(recon.norm(dim=-1), torch.ones(100), atol=1e-5)
    # scale-free: an unnormalised embedding gets the tokens of its direction
    assert torch.equal(fitted.tokenize(3.0 * held_out), tokens)
    assert fitted.n_levels == 4 and fitted.codebook_size == 64
    assert fitted.tokenize(held_out, n_levels=2).shape == (100, 2)


def test_pca_init_is_a_projection():
    torch.manual_seed(0)
    model = ConditioningQuantizer(ConditioningQuantizerConfig(codebook_dim=8, n_levels=1, codebook_size=4))
    model.init_from_data_(F.normalize(torch.randn(3, 512), dim=-1))  # fewer embeddings than codebook_dim
    w = model.project_in.weight  # [8, 512]
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)  # orthonormal rows
    assert torch.allclose(model.project_out.weight, w.T)


def test_bad_inputs(fitted):
    with pytest.raises(ValueError, match=r"embeddings must be \[B, 512\]"):
        fitted.tokenize(torch.randn(512))
    with pytest.raises(ValueError, match="NaN"):
        fitted.tokenize(torch.full((1, 512), float("nan")))
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 63\]"):
        fitted.embed(torch.tensor([[64, 0, 0, 0]]))
    with pytest.raises(ValueError, match="1 <= q <= 4"):
        fitted.embed(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="codebook_dim must be <= embed_dim"):
        ConditioningQuantizerConfig(embed_dim=16, codebook_dim=32)


def test_save_load_fp16(fitted, tmp_path):
    folder = ConditioningQuantizer(dataclass_replace(SMALL, clap_fingerprint="abc")).save_pretrained(tmp_path / "q0")
    assert json.loads((folder / "config.json").read_text())["clap_fingerprint"] == "abc"
    fitted.save_pretrained(tmp_path / "q")
    weights = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert set(weights) == {"codebooks", "project_in.weight", "project_in.bias", "project_out.weight",
                            "project_out.bias"}
    assert weights["codebooks"].shape == (4, 64, 16) and weights["codebooks"].dtype == torch.float16
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < SMALL.size_bytes() + 2000
    loaded = ConditioningQuantizer.from_pretrained(tmp_path / "q")
    x = clustered_embeddings(200, seed=2)
    same = (loaded.tokenize(x) == fitted.tokenize(x)).float().mean()
    assert same > 0.95  # fp16 rounding may flip a near tie
    assert loaded.fingerprint() == fitted.fingerprint()
    # a reloaded quantizer keeps training from its codebooks (no new k-means)
    assert all(bool(layer.codebook.inited.item()) for layer in loaded.rvq.layers)


def test_clap_fingerprint_is_checked(tmp_path):
    model = ConditioningQuantizer(dataclass_replace(SMALL, clap_fingerprint="0123"))
    model.save_pretrained(tmp_path / "q")
    ConditioningQuantizer.from_pretrained(tmp_path / "q", clap_fingerprint="0123")
    with pytest.raises(ValueError, match="retrain it"):
        ConditioningQuantizer.from_pretrained(tmp_path / "q", clap_fingerprint="ffff")
    (tmp_path / "q" / "config.json").write_text(json.dumps({"model_type": "soundsmith-cond-rvq", "n_layers": 3}))
    with pytest.raises(ValueError, match="unknown field 'n_layers'"):
        ConditioningQuantizer.from_pretrained(tmp_path / "q")


def dataclass_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def clap():
    torch.manual_seed(0)
    return SoundsmithClap(ClapConfig(**{**TINY_CLAP, "conv_channels": (8,), "temporal_dilations": (2,)}),
                          text_encoder=SentenceEncoder()).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), num_train=6, num_valid=3, seconds=0.5)


def test_training_resumes_bit_exactly_and_exports(tmp_path, corpus, clap):
    config = write_config(tmp_path / "c.json", TINY_RUN)
    full = train(config, corpus, tmp_path / "a", clap_model=clap)
    train(config, corpus, tmp_path / "b", max_steps=2, clap_model=clap)
    resumed = train(None, corpus, tmp_path / "b", resume=True, clap_model=clap)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cache = load_file(str(tmp_path / "a" / "cache" / "clap-embeddings.safetensors"))
    assert cache["train"].shape == (6 * 3, 16)  # whole clips + 2 crops each
    assert cache["valid_audio"].shape == cache["valid_text"].shape == (3, 16)
    q = ConditioningQuantizer.from_pretrained(full, clap_fingerprint=weights_fingerprint(clap))
    assert q.tokenize(clap.embed_text(["a tone at 440 Hz"])).shape == (1, 3)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "valid/audio_cosine@3" in r][-1]
    assert final["step"] == 4 and -1.0 <= final["valid/text_cosine@3"] <= 1.0
    assert rows[0]["step"] == 0  # the PCA + k-means starting point is measured too


def test_cli(tmp_path, corpus, clap, capsys):
    clap.save_pretrained(tmp_path / "clap", dtype=torch.float32)
    config = write_config(tmp_path / "c.json", {**TINY_RUN, "max_steps": 1})
    argv = ["train", "cond-rvq", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "r"),
            "--clap", str(tmp_path / "clap")]
    assert main(argv) == 0
    assert (tmp_path / "r" / "export" / "model.safetensors").is_file()
    bad = write_config(tmp_path / "bad.json", {**TINY_RUN, "model": {"n_levels": 0}})
    argv = ["train", "cond-rvq", "--config", str(bad), "--data", str(corpus), "--out", str(tmp_path / "r2"),
            "--clap", str(tmp_path / "clap")]
    assert main(argv) == 2
    assert "n_levels" in capsys.readouterr().err
