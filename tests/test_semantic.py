"""Semantic tokens (gen/semantic.py): HuBERT / CLAP frame features, k-means tokenizer, `train kmeans`."""

import json

import numpy as np
import pytest
import torch
from soundsmith.gen.clap import ClapConfig, SoundsmithClap
from soundsmith.gen.semantic import (
    ClapFrameFeatures,
    HubertFeatures,
    SemanticTokenizer,
    fit_kmeans,
    parse_features,
)
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.train.train_kmeans import train
from train_helpers import write_config, write_corpus
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from soundsmith.cli import main

SR = 16000


def tiny_hubert(folder, *, stable: bool = False, seed: int = 0):
    """A random HubertModel in the published layout (config.json, model.safetensors, preprocessor_config.json)."""
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=stable,
                       feat_extract_norm="layer" if stable else "group")
    torch.manual_seed(seed)
    HubertModel(cfg).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(str(folder))
    return folder


def audio(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * (200 + 300 * i) * t) for i in range(batch)])
    return (tones + 0.05 * torch.randn(batch, t.numel(), generator=g))[:, None]  # [B, 1, T]


@pytest.mark.parametrize("stable", [False, True])
def test_hubert_layers_match_transformers(tmp_path, stable):
    folder = tiny_hubert(tmp_path / "hubert", stable=stable)
    reference = HubertModel.from_pretrained(str(folder)).eval()
    fe = Wav2Vec2FeatureExtractor.from_pretrained(str(folder))
    wave = audio()
    inputs = fe([w[0].numpy() for w in wave], sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        states = reference(inputs["input_values"], output_hidden_states=True).hidden_states
    for layer in range(4):
        ours = HubertFeatures.from_pretrained(folder, layer=layer, pool=1)
        got = ours.frame_features(wave, SR)
        assert got.shape == states[layer].shape == (2, 49, 16)
        torch.testing.assert_close(got, states[layer], rtol=1e-5, atol=1e-5)
    pooled = HubertFeatures.from_pretrained(folder, layer=2)  # default pool 2: 50 Hz -> 25 Hz
    assert pooled.frame_rate == 25.0 and pooled.dim == 16
    expected = states[2][:, :48].reshape(2, 24, 2, 16).mean(2)
    torch.testing.assert_close(pooled.frame_features(wave, SR), expected, rtol=1e-5, atol=1e-5)
    # any rate and channel count: mixed to mono and resampled to the model's 16 kHz first
    stereo = torch.cat([wave, wave], dim=1)
    assert pooled.frame_features(stereo[0], 16_000).shape == (1, 24, 16)
    assert pooled.frame_features(np.zeros((1, 44_100), np.float32) + 0.1, 44_100).shape == (1, 24, 16)


def test_hubert_errors(tmp_path):
    folder = tiny_hubert(tmp_path / "hubert")
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 3\]"):
        HubertFeatures.from_pretrained(folder, layer=4)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HubertFeatures.from_pretrained(tmp_path / "missing", layer=1)
    features = HubertFeatures.from_pretrained(folder, layer=1)
    with pytest.raises(ValueError, match="too short"):
        features.frame_features(torch.zeros(1, 100), SR)


def test_parse_features():
    assert parse_features("clap") == {"kind": "clap"}
    assert parse_features("hubert:/m/hub:ert:9") == {"kind": "hubert", "path": "/m/hub:ert", "layer": 9}
    for bad in ("hubert", "hubert:/m", "hubert:/m:x", "mert:/m:7"):
        with pytest.raises(ValueError, match="hubert:PATH:LAYER"):
            parse_features(bad)


def blobs(n_per: int = 200, k: int = 6, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = 10 * torch.randn(k, dim, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per)
    return centers[labels] + torch.randn(k * n_per, dim, generator=g), labels


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_finds_the_blobs(backend):
    x, labels = blobs()
    centroids = fit_kmeans(x, 6, iters=20, seed=0, backend=backend)
    assert centroids.shape == (6, 8)
    nearest = torch.cdist(x, centroids).argmin(1)
    # each blob maps onto one cluster and no two blobs share one
    mapping = {int(lab): set(nearest[labels == lab].tolist()) for lab in range(6)}
    assert all(len(v) == 1 for v in mapping.values()) and len(set.union(*mapping.values())) == 6
    with pytest.raises(ValueError, match="at least n_clusters=7000"):
        fit_kmeans(x, 7000, backend=backend)


@pytest.fixture(scope="module")
def clap():
    torch.manual_seed(0)
    cfg = ClapConfig(embed_dim=16, stem_channels=4, conv_channels=(8,), frame_dim=8, temporal_dilations=(2,),
                     projection_hidden=16)
    return SoundsmithClap(cfg, text_encoder=SentenceEncoder()).eval()


def test_clap_frame_features_and_tokenizer_round_trip(tmp_path, clap):
    features = ClapFrameFeatures(clap, path=tmp_path / "clap")
    wave = audio(batch=2, seconds=2.0)
    frames = features.frame_features(wave, SR)
    torch.testing.assert_close(frames, clap.audio_frame_features(wave, SR))
    assert frames.shape == (2, 50, 8) and features.frame_rate == 25.0

    tok = SemanticTokenizer(features, n_clusters=16).fit([frames, features.frame_features(audio(3, 1.0, 1), SR)])
    tokens = tok.tokenize(wave, SR)
    assert tokens.shape == (2, 50) and tokens.dtype == torch.long and int(tokens.max()) < 16
    assert torch.equal(tok.tokenize_features(frames), tokens)
    assert tok.n_clusters == 16 and tok.frame_rate == 25.0

    clap.save_pretrained(tmp_path / "clap", dtype=torch.float32)
    tok.save_pretrained(tmp_path / "km")
    config = json.loads((tmp_path / "km" / "config.json").read_text())
    assert config["features"]["kind"] == "clap" and config["features_fingerprint"] == features.fingerprint()
    # rebuilt from the recorded CLAP folder, or given the pipeline's already loaded CLAP
    for loaded in (SemanticTokenizer.from_pretrained(tmp_path / "km"),
                   SemanticTokenizer.from_pretrained(tmp_path / "km", features=features)):
        assert (loaded.tokenize(wave, SR) == tokens).float().mean() > 0.95  # fp16 centroids: rare tie flips
        assert loaded.fingerprint() == tok.fingerprint()


def test_tokenizer_refuses_other_features(tmp_path):
    h1, h2 = tiny_hubert(tmp_path / "h1"), tiny_hubert(tmp_path / "h2", seed=1)
    f1 = HubertFeatures.from_pretrained(h1, layer=1)
    tok = SemanticTokenizer(f1, n_clusters=4).fit(f1.frame_features(audio(2, 1.0), SR))
    tok.save_pretrained(tmp_path / "km")
    with pytest.raises(ValueError, match="not the one the centroids were fitted on"):
        SemanticTokenizer.from_pretrained(tmp_path / "km", features=HubertFeatures.from_pretrained(h2, layer=1))
    with pytest.raises(ValueError, match="fitted at 25 Hz"):
        SemanticTokenizer.from_pretrained(tmp_path / "km", features=HubertFeatures.from_pretrained(h1, layer=1,
                                                                                                   pool=1))
    with pytest.raises(ValueError, match="not fitted"):
        SemanticTokenizer(f1).tokenize(audio(1), SR)
    with pytest.raises(ValueError, match="8 dimensions, the tokenizer expects 16"):
        SemanticTokenizer(f1, n_clusters=4).fit(torch.randn(100, 8))


def test_train_kmeans_on_hubert_features(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", num_train=6, num_valid=2, seconds=0.5)
    hubert = tiny_hubert(tmp_path / "hubert")
    config = write_config(tmp_path / "km.json", {"n_clusters": 8, "iters": 5, "shard_clips": 4, "frames_per_clip": 10})
    argv = ["train", "kmeans", "--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "run"),
            "--features", f"hubert:{hubert}:2"]
    assert main(argv) == 0
    export = tmp_path / "run" / "export"
    tok = SemanticTokenizer.from_pretrained(export)
    assert isinstance(tok.features, HubertFeatures) and tok.features.layer == 2 and tok.n_clusters == 8
    assert sorted(p.name for p in (tmp_path / "run" / "cache").iterdir()) == ["frames-00000.safetensors",
                                                                             "frames-00001.safetensors"]
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["train/frames"] == 60 and 0 <= metrics["valid/unexplained_variance"] <= 1.5
    first = tok.centroids.clone()
    assert main(argv) == 2  # a fresh run refuses a folder holding one
    (export / "config.json").unlink()
    assert train(None, corpus, tmp_path / "run", resume=True) == export  # reuses the cached frames
    torch.testing.assert_close(SemanticTokenizer.from_pretrained(export).centroids, first)
