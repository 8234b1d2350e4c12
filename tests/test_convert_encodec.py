"""EnCodec checkpoints in and out: an original facebookresearch/encodec state dict (built here by walking
a transformers EncodecModel and naming its tensors the way encodec's SEANet modules do) loads strictly
and matches transformers' own encode/decode; our codec exported as a transformers EnCodec folder
decodes our codes to the same audio through `EncodecModel.from_pretrained`."""

import json

import pytest
import torch
from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig
from soundsmith.pipelines.convert import CONVERTERS
from soundsmith.pipelines.convert_encodec import PRESETS, export_transformers, infer_config, load_encodec
from transformers import EncodecConfig, EncodecModel
from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecConvTranspose1d, EncodecLSTM

TINY_24K = dict(num_filters=2, hidden_size=8)  # the encodec_24khz layout (causal, conv skips, 2 LSTM layers)


def random_model(seed: int = 0, **config) -> EncodecModel:
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)  # gains that differ from |v|, so g and v cannot be swapped
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("codebook.embed"):
                buf.normal_(0, 0.1)
            elif name.endswith("codebook.embed_avg") or name.endswith("codebook.cluster_size"):
                buf.uniform_()
    return model


def original_state_dict(model: EncodecModel) -> dict[str, torch.Tensor]:
    """The model's tensors under facebookresearch/encodec's names: SConv1d.conv (NormConv1d).conv
    (weight-normed nn.Conv1d, old API: weight_g / weight_v), SConvTranspose1d.convtr.convtr, SLSTM.lstm,
    ResidualVectorQuantizer.vq.layers[k]._codebook; encoder/decoder are `nn.Sequential`s named `model`."""
    out = {}
    for path, module in model.named_modules():
        orig = path.replace("encoder.layers.", "encoder.model.").replace("decoder.layers.", "decoder.model.")
        if isinstance(module, (EncodecConv1d, EncodecConvTranspose1d)):
            inner = "conv.conv" if isinstance(module, EncodecConv1d) else "convtr.convtr"
            wn = module.conv.parametrizations.weight
            out[f"{orig}.{inner}.weight_g"] = wn.original0.detach().clone()
            out[f"{orig}.{inner}.weight_v"] = wn.original1.detach().clone()
            out[f"{orig}.{inner}.bias"] = module.conv.bias.detach().clone()
        elif isinstance(module, EncodecLSTM):
            for name, p in module.lstm.named_parameters():
                out[f"{orig}.lstm.{name}"] = p.detach().clone()
    for k, layer in enumerate(model.quantizer.layers):
        for name, buf in layer.codebook.named_buffers():
            out[f"quantizer.vq.layers.{k}._codebook.{name}"] = buf.detach().clone()
    return out


def write_original(tmp_path, model: EncodecModel, *, with_config: bool = True, wrap: bool = False):
    state = original_state_dict(model)
    path = tmp_path / "encodec_tiny.th"
    torch.save({"best_state": state, "xp.cfg": {"sample_rate": model.config.sampling_rate}} if wrap else state, path)
    if with_config:
        (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    return path, state


def reference(model: EncodecModel, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        ref = model.encode(wave, bandwidth=max(model.config.target_bandwidths))
        return ref.audio_codes[0], model.decode(ref.audio_codes, ref.audio_scales)[0]


@pytest.mark.parametrize("wrap", [False, True], ids=["encodec", "audiocraft-best_state"])
def test_original_state_dict_loads_and_matches_transformers(tmp_path, wrap):
    model = random_model(**TINY_24K)
    path, state = write_original(tmp_path, model, wrap=wrap)
    assert "decoder.model.3.convtr.convtr.weight_v" in state and "encoder.model.1.shortcut.conv.conv.weight_g" in state
    codec = load_encodec(path)
    wave = torch.randn(1, 1, 2400) * 0.3
    codes, audio = reference(model, wave)
    assert torch.equal(codec.encode(wave), codes)
    torch.testing.assert_close(codec.decode(codes), audio, atol=1e-5, rtol=1e-4)


def test_convert_cli_entry_writes_a_codec_folder(tmp_path):
    model = random_model(**TINY_24K)
    path, _ = write_original(tmp_path, model)
    out = CONVERTERS["encodec"]()(path, tmp_path / "out", trust_pickle=False)
    codec = NeuralCodec.from_pretrained(out)
    assert codec.sample_rate == 24_000 and codec.max_levels == 32 and codec.config.use_causal_conv
    wave = torch.randn(1, 1, 1200) * 0.3
    codes, audio = reference(model, wave)
    torch.testing.assert_close(codec.decode(codec.encode(wave)), audio, atol=1e-5, rtol=1e-4)


def test_wrong_names_are_refused(tmp_path):
    model = random_model(**TINY_24K)
    _, state = write_original(tmp_path, model)
    cases = {
        # a decoder upsampling layer named like a plain convolution: maps to the same tensor, still refused
        "convtr as conv": {k.replace("decoder.model.3.convtr.convtr.", "decoder.model.3.conv.conv."): v
                           for k, v in state.items()},
        "missing key": {k: v for k, v in state.items() if k != "encoder.model.13.lstm.weight_hh_l1"},
        "foreign key": {**state, "encoder.model.0.conv.conv.running_mean": torch.zeros(2)},
        "transformers names": {k.replace(".model.", ".layers."): v for k, v in state.items()},
    }
    for name, bad in cases.items():
        torch.save(bad, tmp_path / "bad.th")
        with pytest.raises(ValueError) as err:
            load_encodec(tmp_path / "bad.th")
        assert "\n" not in str(err.value), name
        assert "bad.th" in str(err.value) and "key" in str(err.value), name


def test_swapped_weight_norm_halves_are_caught(tmp_path):
    """g and v have different shapes ([C, 1, 1] vs [C, C_in, k]): a wrong g/v mapping cannot load."""
    model = random_model(**TINY_24K)
    _, state = write_original(tmp_path, model)
    swapped = {}
    for k, v in state.items():
        k2 = k.replace("weight_g", "TMP").replace("weight_v", "weight_g").replace("TMP", "weight_v")
        swapped[k2] = v
    torch.save(swapped, tmp_path / "bad.th")
    with pytest.raises(ValueError, match="has shape"):
        load_encodec(tmp_path / "bad.th")


def test_published_layouts_are_recognised_from_the_weights():
    for name, preset in PRESETS.items():
        nf, bins, hidden = preset["num_filters"], preset["codebook_size"], preset["hidden_size"]
        state = {"encoder.layers.0.conv.parametrizations.weight.original1": torch.zeros(nf, 1, 7),
                 "quantizer.layers.0.codebook.embed": torch.zeros(bins, hidden)}
        if preset["use_conv_shortcut"]:
            state["encoder.layers.1.shortcut.conv.bias"] = torch.zeros(nf)
        cfg = infer_config(state)
        assert (cfg.sample_rate, cfg.use_causal_conv) == (preset["sample_rate"], preset["use_causal_conv"]), name
    with pytest.raises(ValueError, match="put its transformers config.json beside the checkpoint"):
        infer_config({"encoder.layers.0.conv.parametrizations.weight.original1": torch.zeros(3, 1, 7),
                      "quantizer.layers.0.codebook.embed": torch.zeros(1024, 128)}, "x.th")


def test_unknown_layout_without_config_and_corrupt_files(tmp_path):
    model = random_model(**TINY_24K)
    path, _ = write_original(tmp_path, model, with_config=False)
    with pytest.raises(ValueError, match="an EnCodec layout soundsmith does not know"):
        load_encodec(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated") as err:
        load_encodec(path)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_encodec(tmp_path / "missing.th")


# ---------------------------------------------------------------------------------------- export


def trained_looking_codec() -> NeuralCodec:
    torch.manual_seed(0)
    codec = NeuralCodec(NeuralCodecConfig(num_filters=2, hidden_size=4, n_levels=4, codebook_size=64)).train()
    codec(torch.randn(2, 1, 3200) * 0.1)  # one training step: k-means init + EMA, real codebooks
    return codec.eval()


def test_export_decodes_our_codes_to_the_same_audio_in_transformers(tmp_path):
    codec = trained_looking_codec()
    out = export_transformers(codec, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file()
    model = EncodecModel.from_pretrained(out).eval()
    for k, layer in enumerate(codec.quantizer.layers):  # the codebooks sit in transformers' buffers
        torch.testing.assert_close(model.quantizer.layers[k].codebook.embed, layer.codebook.embed)
    wave = torch.randn(2, 1, 4000) * 0.3
    codes = codec.encode(wave)
    with torch.no_grad():
        audio = model.decode(codes[None], [None])[0]
        ref_codes = model.encode(wave, bandwidth=max(model.config.target_bandwidths)).audio_codes[0]
    assert (audio - codec.decode(codes)).abs().max() <= 1e-4
    assert torch.equal(ref_codes, codes)
    with torch.no_grad():  # fewer levels: transformers' k-th bandwidth (k * 50 Hz * 6 bits) is our n_levels = k
        three = model.encode(wave, bandwidth=model.config.target_bandwidths[2]).audio_codes[0]
    assert torch.equal(three, codec.encode(wave, n_levels=3))


def test_export_of_an_fp16_folder_and_reload(tmp_path):
    codec = trained_looking_codec()
    folder = codec.save_pretrained(tmp_path / "ours", dtype=torch.float16)
    out = export_transformers(folder, tmp_path / "hf")
    model = EncodecModel.from_pretrained(out).eval()
    back = NeuralCodec.from_pretrained(out)  # a transformers folder loads through our API too
    wave = torch.randn(1, 1, 1600) * 0.3
    codes = back.encode(wave)
    with torch.no_grad():
        audio = model.decode(codes[None], [None])[0]
    assert (audio - back.decode(codes)).abs().max() <= 1e-4
