"""The RVQ neural codec: API, shapes, levels, transformers parity, published transformers EnCodec
folders (24 kHz and 32 kHz layouts) loaded through the same API, fp16 round trip, bad input."""

import logging

import pytest
import torch
from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig
from transformers import EncodecConfig, EncodecModel

# a few thousand weights: 16 kHz, hop 320, 4 levels of 64 codes
TINY = NeuralCodecConfig(num_filters=2, hidden_size=4, n_levels=4, codebook_size=64)


def random_codebooks(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill every codebook (ours or transformers') with random codewords, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith("codebook.embed"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("codebook.inited"):
                buf.fill_(1.0)


def tiny_codec(seed: int = 0, config: NeuralCodecConfig = TINY) -> NeuralCodec:
    torch.manual_seed(seed)
    codec = NeuralCodec(config)
    random_codebooks(codec, seed)
    return codec.eval()


def test_properties_and_shapes():
    codec = tiny_codec()
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate, codec.channels) == (16000, 320, 50.0, 1)
    assert codec.n_levels == codec.max_levels == 4 and codec.codebook_size == 64
    wave = torch.randn(2, 1, 1000) * 0.1
    codes = codec.encode(wave)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.int64  # ceil(1000 / 320) frames
    assert codec.num_frames(1000) == 4
    assert torch.equal(codec.encode(wave, n_levels=2), codes[:, :2])  # levels are a prefix
    assert codec.decode(codes).shape == (2, 1, 4 * 320)
    assert codec.decode(codes[:, :1]).shape == (2, 1, 1280)  # any number of leading levels decodes
    assert codec.decode(codes, num_samples=1000).shape == (2, 1, 1000)
    assert codec.reconstruct(wave).shape == (2, 1, 1000)


def test_default_levels_chosen_at_load(tmp_path):
    tiny_codec().save_pretrained(tmp_path)
    codec = NeuralCodec.from_pretrained(tmp_path, n_levels=3)
    assert codec.n_levels == 3 and codec.max_levels == 4
    assert codec.encode(torch.zeros(1, 1, 640)).shape == (1, 3, 2)
    with pytest.raises(ValueError, match=r"n_levels must be an integer in \[1, 4\]"):
        NeuralCodec.from_pretrained(tmp_path, n_levels=5)


def test_matches_transformers_encodec_on_the_same_weights():
    codec = tiny_codec()
    model = EncodecModel(codec.config.to_transformers()).eval()
    model.load_state_dict(codec.state_dict(), strict=True)  # our state dict is EncodecModel's
    wave = torch.randn(2, 1, 1111) * 0.3
    with torch.no_grad():
        ref = model.encode(wave, bandwidth=max(codec.config.bandwidths()))
        ref_audio = model.decode(ref.audio_codes, ref.audio_scales)[0]
    codes = codec.encode(wave)
    assert torch.equal(codes, ref.audio_codes[0])
    torch.testing.assert_close(codec.decode(codes), ref_audio, atol=1e-6, rtol=1e-5)


def test_bandwidths_give_one_entry_per_level():
    cfg = NeuralCodecConfig()  # 50 Hz x 10 bits = 0.5 kbps per level
    assert cfg.bandwidths() == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    assert cfg.to_transformers().num_quantizers == 8
    with pytest.raises(ValueError, match="means 4 levels in transformers, but n_levels=8"):
        NeuralCodecConfig(target_bandwidths=(2.0,))


def test_default_config_fits_the_8_mb_budget():
    codec = NeuralCodec()  # the shipped architecture: 16 kHz, hop 320, 8 x 1024, one LSTM layer
    size = sum(v.numel() * 2 for v in codec.state_dict().values())  # fp16 bytes of everything saved
    assert size <= 8_000_000, f"default codec is {size / 1e6:.2f} MB in fp16"
    assert codec.config.num_lstm_layers >= 1 and codec.num_parameters()["codebooks"] == 8 * 1024 * 32


def test_training_forward_reaches_the_encoder():
    torch.manual_seed(0)
    codec = NeuralCodec(TINY).train()
    wave = torch.randn(2, 1, 640) * 0.1
    out = codec(wave, n_levels=4)
    assert out.audio.shape == (2, 1, 640) and out.codes.shape == (2, 4, 2) and out.n_levels == 4
    assert out.perplexity.shape == (4,)
    (out.audio.pow(2).mean() + out.commit_loss).backward()
    enc = [p.grad for p in codec.encoder.parameters()]
    assert all(g is not None for g in enc) and sum(float(g.abs().sum()) for g in enc) > 0
    assert float(codec.quantizer.layers[0].codebook.inited) == 1.0  # k-means ran on the first batch


def test_resamples_and_mixes_down_with_a_log(caplog):
    codec = tiny_codec()
    stereo_8k = torch.randn(1, 2, 800) * 0.1
    with caplog.at_level(logging.INFO, logger="soundsmith.codecs.neural_codec"):
        codes = codec.encode(stereo_8k, sample_rate=8000)
    assert codes.shape == (1, 4, 5)  # 800 samples at 8 kHz = 1600 at 16 kHz = 5 frames
    assert "resampling the input from 8000 Hz" in caplog.text
    mono = codec.encode(stereo_8k.mean(1, keepdim=True), sample_rate=8000)
    assert torch.equal(codes, mono)
    assert codec.reconstruct(stereo_8k, sample_rate=8000).shape == (1, 1, 1600)


def test_fp16_save_and_load(tmp_path):
    codec = tiny_codec()
    folder = codec.save_pretrained(tmp_path / "c", dtype=torch.float16)
    loaded = NeuralCodec.from_pretrained(folder)
    assert loaded.config == codec.config and next(loaded.parameters()).dtype == torch.float32
    wave = torch.randn(1, 1, 960) * 0.1
    codes = codec.encode(wave)
    torch.testing.assert_close(loaded.decode(codes), codec.decode(codes), atol=2e-3, rtol=0)


# ------------------------------------------------------------------- published transformers folders


LAYOUTS = {  # the published configs (transformers' converter), narrowed to a few thousand weights
    "encodec_24khz": dict(num_filters=2, hidden_size=8),  # causal, conv skips, 2 LSTM layers, 32 x 1024
    "encodec_32khz": dict(num_filters=2, hidden_size=8, sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4],
                          target_bandwidths=[2.2], codebook_size=2048, use_causal_conv=False,
                          use_conv_shortcut=False),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_transformers_folder_loads_and_matches_transformers(tmp_path, layout):
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**LAYOUTS[layout])).eval()
    random_codebooks(model)
    model.save_pretrained(tmp_path)
    codec = NeuralCodec.from_pretrained(tmp_path)
    sr = model.config.sampling_rate
    assert codec.sample_rate == sr and codec.max_levels == model.config.num_quantizers
    assert codec.frame_rate == sr / model.config.hop_length
    wave = torch.randn(1, 1, sr // 10) * 0.3
    with torch.no_grad():
        for bandwidth in model.config.target_bandwidths:
            ref = model.encode(wave, bandwidth=bandwidth)
            n = ref.audio_codes.shape[2]
            codes = codec.encode(wave, n_levels=n)
            assert torch.equal(codes, ref.audio_codes[0]), bandwidth
            ref_audio = model.decode(ref.audio_codes, ref.audio_scales)[0]
            torch.testing.assert_close(codec.decode(codes), ref_audio, atol=1e-5, rtol=1e-4)


def test_legacy_weight_norm_names_load(tmp_path):
    """Hub files written before torch's parametrized weight norm name the pair weight_g / weight_v."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**LAYOUTS["encodec_24khz"])).eval()
    random_codebooks(model)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    legacy = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                    "weight_v"): v
              for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in legacy)
    save_file(legacy, str(tmp_path / "model.safetensors"))
    codec = NeuralCodec.from_pretrained(tmp_path)
    wave = torch.randn(1, 1, 2400) * 0.3
    with torch.no_grad():
        ref = model.encode(wave, bandwidth=24.0)
        ref_audio = model.decode(ref.audio_codes, ref.audio_scales)[0]
    torch.testing.assert_close(codec.decode(codec.encode(wave)), ref_audio, atol=1e-5, rtol=1e-4)


def test_48khz_layout_is_refused(tmp_path):
    EncodecModel(EncodecConfig(num_filters=2, hidden_size=8, sampling_rate=48_000, audio_channels=2,
                               normalize=True, chunk_length_s=1.0, overlap=0.01, norm_type="time_group_norm",
                               use_causal_conv=False, target_bandwidths=[3.0, 6.0])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="normalize=True, chunk_length_s=1.0 .* not supported"):
        NeuralCodec.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------- bad input


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("codes, match", [
    (torch.full((1, 4, 3), 64), r"codes must be in \[0, 63\] \(codebook size 64\), found 64"),
    (torch.full((1, 4, 3), -1), r"found -1"),
    (torch.zeros(1, 5, 3, dtype=torch.long), r"levels 1\.\.4"),
    (torch.zeros(4, 3, dtype=torch.long), r"shaped \[batch, levels 1\.\.4, frames >= 1\], got \[4, 3\]"),
    (torch.zeros(1, 4, 0, dtype=torch.long), r"got \[1, 4, 0\]"),
    (torch.zeros(1, 4, 3), r"codes must be integers, got dtype torch.float32"),
    ([[[0]]], r"codes must be a torch.Tensor"),
])
def test_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match) as err:
        tiny_codec().decode(codes)
    one_line(err)


def test_bad_waves_and_levels():
    codec = tiny_codec()
    for wave, match in [(torch.zeros(1, 320), r"\[batch, channels, samples\]"),
                        (torch.full((1, 1, 320), float("nan")), "NaN"),
                        (torch.zeros(1, 1, 0), "empty")]:
        with pytest.raises(ValueError, match=match) as err:
            codec.encode(wave)
        one_line(err)
    with pytest.raises(ValueError, match=r"n_levels must be an integer in \[1, 4\], got 0"):
        codec.encode(torch.zeros(1, 1, 320), n_levels=0)
    with pytest.raises(ValueError, match="sample_rate"):
        codec.encode(torch.zeros(1, 1, 320), sample_rate=-5)


def test_corrupt_or_missing_checkpoint(tmp_path):
    folder = tiny_codec().save_pretrained(tmp_path / "c")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated") as err:
        NeuralCodec.from_pretrained(folder)
    one_line(err)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        NeuralCodec.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "Vocoder"}')
    with pytest.raises(ValueError, match="neither a soundsmith 'NeuralCodec' nor a transformers EnCodec") as err:
        NeuralCodec.from_pretrained(tmp_path / "other")
    one_line(err)


def test_checkpoint_of_another_architecture(tmp_path):
    tiny_codec().save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"num_filters": 2', '"num_filters": 4')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="has shape .* expects") as err:
        NeuralCodec.from_pretrained(tmp_path)
    one_line(err)


def test_config_errors():
    with pytest.raises(ValueError, match="num_lstm_layers must be >= 1"):
        NeuralCodecConfig(num_lstm_layers=0)
    with pytest.raises(ValueError, match="power of 2"):
        NeuralCodecConfig(codebook_size=1000)
    with pytest.raises(ValueError, match="unknown field 'n_level'"):
        NeuralCodecConfig.from_dict({"n_level": 3})
