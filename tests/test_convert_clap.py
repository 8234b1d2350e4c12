"""laion_clap checkpoint -> transformers ClapModel folder (pipelines/convert_laion_clap.py).

There is no laion_clap package here, so the test writes a tiny random checkpoint in the original key
layout by inverting the mapping from a random transformers ClapModel, written out by hand below
(Swin/HTSAT names, a fused qkv, nn.Sequential projections, the torchlibrosa front-end, the AudioSet
head, attn_mask buffers, the training-only transforms and the DDP `module.` prefix), converts it, and
compares weights and embeddings with the model it came from.
"""

import json
import re

import numpy as np
import pytest
import torch
from soundsmith.gen.clap import TransformersClap, load_clap
from soundsmith.pipelines.convert_laion_clap import (
    convert_laion_clap,
    infer_clap_config,
    load_laion_state_dict,
    rename_laion_keys,
)


def tiny_roberta_tokenizer():
    # Copied from tests/test_clap.py: a RoBERTa-format byte-level BPE built offline.
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
    # text hidden 64 with 1 head: hidden // 64 heads, what the converter assumes without a config
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(1)
    config = ClapConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                         intermediate_size=37, max_position_embeddings=80),
        audio_config=dict(patch_embeds_hidden_size=16, depths=[2, 1], num_attention_heads=[2, 4], hidden_size=32,
                          window_size=8, enable_fusion=fused, fusion_type="aff_2d" if fused else None),
        projection_dim=24)
    model = ClapModel(config).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a dropped or misplaced buffer shows
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand_like(buf) + 0.5)
        for name, p in model.named_parameters():  # peaked attention (init is near uniform), so q/k order matters
            if re.search(r"attention\.self\.(query|key)\.weight$", name):
                p.mul_(30.0)
    return model


def to_laion_layout(model) -> dict:
    """transformers ClapModel state dict -> original laion_clap checkpoint dict (the inverse mapping)."""
    sd = model.state_dict()
    out, qkv = {}, {}
    block = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.(.*)$")
    for key, value in sd.items():
        if key.startswith("text_model."):
            out["text_branch." + key.removeprefix("text_model.")] = value
        elif m := re.match(r"^(text|audio)_projection\.linear([12])\.(.*)$", key):
            out[f"{m.group(1)}_projection.{0 if m.group(2) == '1' else 2}.{m.group(3)}"] = value
        elif key.startswith("audio_model.audio_encoder."):
            rest = key.removeprefix("audio_model.audio_encoder.")
            if rest.startswith("batch_norm."):
                rest = "bn0." + rest.removeprefix("batch_norm.")
            elif m := block.match(rest):
                head, tail = m.groups()
                if q := re.match(r"^attention\.self\.(query|key|value)\.(weight|bias)$", tail):
                    qkv.setdefault((head, q.group(2)), {})[q.group(1)] = value
                    continue
                tail = (tail.replace("layernorm_before.", "norm1.").replace("layernorm_after.", "norm2.")
                        .replace("attention.output.dense.", "attn.proj.").replace("attention.self.", "attn.")
                        .replace("intermediate.dense.", "mlp.fc1.").replace("output.dense.", "mlp.fc2."))
                rest = f"{head}.{tail}"
            out["audio_branch." + rest] = value
        else:
            out[key] = value  # logit_scale_a / logit_scale_t
    for (head, kind), parts in qkv.items():
        out[f"audio_branch.{head}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    # parts transformers does not have: front-end, AudioSet head, Swin masks, training-only MLPs
    g = torch.Generator().manual_seed(0)
    # (shapes shrunk: these tensors are dropped, only their names matter)
    out["audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.randn(9, 1, 16, generator=g)
    out["audio_branch.spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(9, 1, 16, generator=g)
    out["audio_branch.logmel_extractor.melW"] = torch.rand(9, 64, generator=g)
    out["audio_branch.tscam_conv.weight"] = torch.randn(5, 32, 2, 3, generator=g)
    out["audio_branch.tscam_conv.bias"] = torch.zeros(5)
    out["audio_branch.head.weight"] = torch.randn(5, 5, generator=g)
    out["audio_branch.head.bias"] = torch.zeros(5)
    out["audio_branch.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 64, 64)  # 8x8 windows of 8x8 patches
    out["text_transform.sequential.0.weight"] = torch.randn(24, 24, generator=g)
    out["audio_transform.sequential.3.bias"] = torch.zeros(24)
    return {"epoch": 15, "name": "tiny", "state_dict": {"module." + k: v for k, v in out.items()}}


@pytest.fixture(params=[False, True], ids=["unfused", "fused"])
def laion_checkpoint(request, tmp_path):
    tokenizer, vocab, merges = tiny_roberta_tokenizer()
    model = tiny_clap_model(len(tokenizer), request.param)
    path = tmp_path / "src" / "tiny-630k-best.pt"
    path.parent.mkdir()
    torch.save(to_laion_layout(model), path)
    (path.parent / "vocab.json").write_text(json.dumps(vocab))  # laion_clap's RoBERTa tokenizer files
    (path.parent / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return path, model, tokenizer


def test_converted_checkpoint_matches_the_original(laion_checkpoint, tmp_path):
    path, model, tokenizer = laion_checkpoint
    out = convert_laion_clap(path, tmp_path / "out")
    converted = load_clap(out)
    assert isinstance(converted, TransformersClap)
    assert converted.model.config.audio_config.enable_fusion == model.config.audio_config.enable_fusion
    assert list(converted.model.config.audio_config.depths) == [2, 1]
    assert converted.model.config.audio_config.spec_size == 256  # read off attn_mask
    theirs = converted.model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=key)

    texts = ["the sound of rain", "thunder"]
    with torch.no_grad():
        ref_t = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(converted.embed_text(texts), ref_t, atol=1e-4, rtol=0)
    wave = (0.1 * np.random.default_rng(0).standard_normal((1, 1, 48000))).astype(np.float32)
    fe = converted.feature_extractor
    inputs = fe([wave[0, 0].astype(np.float64)], sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        ref_a = model.get_audio_features(input_features=inputs["input_features"],
                                         is_longer=torch.zeros(1, 1, dtype=torch.bool)).pooler_output
    torch.testing.assert_close(converted.embed_audio(wave, 48000), ref_a, atol=1e-4, rtol=0)


def test_a_wrong_mapping_would_fail(laion_checkpoint, tmp_path):
    """The comparison above is sharp: swapping q and k inside one fused qkv changes the embedding."""
    path, model, _ = laion_checkpoint
    ckpt = torch.load(path, weights_only=True)
    key = "module.audio_branch.layers.0.blocks.0.attn.qkv.weight"
    q, k, v = ckpt["state_dict"][key].chunk(3)
    ckpt["state_dict"][key] = torch.cat([k, q, v])
    torch.save(ckpt, path)
    wrong = load_clap(convert_laion_clap(path, tmp_path / "wrong"))
    good = TransformersClap(model, wrong.feature_extractor, None)
    wave = (0.1 * np.random.default_rng(0).standard_normal((1, 1, 48000))).astype(np.float32)
    assert (wrong.embed_audio(wave, 48000) - good.embed_audio(wave, 48000)).abs().max() > 1e-3


def test_rename_rules():
    state = {"text_branch.pooler.dense.weight": torch.zeros(1), "text_projection.2.bias": torch.zeros(1),
             "audio_branch.layers.1.blocks.0.norm2.weight": torch.zeros(1),
             "audio_branch.layers.1.blocks.0.attn.proj.bias": torch.zeros(1),
             "audio_branch.layers.1.blocks.0.mlp.fc2.weight": torch.zeros(1),
             "audio_branch.layers.0.downsample.reduction.weight": torch.zeros(1),
             "audio_branch.layers.1.blocks.0.attn.qkv.bias": torch.arange(6.0),
             "audio_branch.head.weight": torch.zeros(1), "logit_scale_a": torch.zeros(())}
    out = rename_laion_keys(state)
    assert sorted(out) == sorted([
        "text_model.pooler.dense.weight", "text_projection.linear2.bias",
        "audio_model.audio_encoder.layers.1.blocks.0.layernorm_after.weight",
        "audio_model.audio_encoder.layers.1.blocks.0.attention.output.dense.bias",
        "audio_model.audio_encoder.layers.1.blocks.0.output.dense.weight",
        "audio_model.audio_encoder.layers.0.downsample.reduction.weight",
        *(f"audio_model.audio_encoder.layers.1.blocks.0.attention.self.{n}.bias" for n in ("query", "key", "value")),
        "logit_scale_a"])
    assert out["audio_model.audio_encoder.layers.1.blocks.0.attention.self.key.bias"].tolist() == [2.0, 3.0]


def test_bad_checkpoints(laion_checkpoint, tmp_path):
    path, model, _ = laion_checkpoint
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["state_dict"]
    with pytest.raises(ValueError, match="unsupported laion_clap key 'token_embedding.weight'"):
        rename_laion_keys({"token_embedding.weight": torch.zeros(1)})  # CLIP-style text branch
    missing = {k: v for k, v in sd.items() if "layers.0.blocks.0.mlp.fc1.bias" not in k}
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing 'audio_model.audio_encoder.layers.0.blocks.0.intermediate.dense.bias'"):
        convert_laion_clap(tmp_path / "missing.pt", tmp_path / "o1")
    torch.save({"state_dict": sd, "args": object.__new__(Opaque)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pass --trust-pickle"):
        load_laion_state_dict(tmp_path / "pickled.pt")
    assert len(load_laion_state_dict(tmp_path / "pickled.pt", trust_pickle=True)) == len(sd)
    with pytest.raises(FileNotFoundError, match="laion_clap checkpoint not found"):
        convert_laion_clap(tmp_path / "nope.pt", tmp_path / "o2")


def test_infer_config_and_cli(laion_checkpoint, tmp_path):
    from soundsmith.pipelines.convert import CONVERTERS

    from soundsmith.cli import main

    path, model, _ = laion_checkpoint
    cfg = infer_clap_config(load_laion_state_dict(path))
    assert list(cfg.audio_config.num_attention_heads) == [2, 4] and cfg.audio_config.window_size == 8
    assert cfg.text_config.num_hidden_layers == 2 and cfg.projection_dim == 24
    assert "laion-clap" in CONVERTERS
    assert main(["convert", "laion-clap", str(path), str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file() and (tmp_path / "cli" / "vocab.json").is_file()
    model.config.save_pretrained(tmp_path / "hfconfig")  # an explicit config instead of the inferred one
    out = convert_laion_clap(path, tmp_path / "with-config", config=tmp_path / "hfconfig")
    assert load_clap(out).model.config.text_config.num_attention_heads == 1
    with pytest.raises(FileNotFoundError, match="ClapConfig not found"):
        convert_laion_clap(path, tmp_path / "o3", config=tmp_path / "nowhere.json")


class Opaque:  # stands for the argparse Namespace some laion_clap checkpoints pickle
    pass
