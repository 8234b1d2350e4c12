"""Evaluation embedders (eval/embedders.py): each backend's windows, and parity with the reference code
given the same random weights in the published layout (torchvggish, panns_inference, transformers'
ClapModel and EncodecModel), plus our CLAP's per-window pooling and the one-line errors."""

import importlib
import importlib.util
import json
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from soundsmith.codecs.audio import resample
from soundsmith.eval.embedders import (
    EMBEDDERS,
    PANNS_VARIANTS,
    ClapEmbedder,
    PannsEmbedder,
    get_embedder,
    spread_starts,
)
from soundsmith.gen.clap import ClapConfig, SoundsmithClap, window_starts
from soundsmith.gen.text_encoder import SentenceEncoder


def noise(*shape: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def tone_and_noise(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Stereo `[2, T]`: a tone on the left, another on the right, a little noise on both."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 1250 * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


# ------------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("length,window,hop", [(125, 62, 31), (62, 62, 31), (10, 62, 31), (1000, 62, 31),
                                               (2100, 1000, 1000), (1200, 1000, 1000), (93, 62, 31)])
def test_spread_starts_cover_the_clip_evenly(length, window, hop):
    starts = spread_starts(length, window, hop)
    assert starts[0] == 0
    if length <= window:
        assert starts == [0]
        return
    assert starts[-1] == length - window  # the last window ends at the end: nothing padded
    gaps = np.diff(starts)
    assert (gaps <= window).all() and (gaps > 0).all()  # every sample covered, no repeated window
    assert abs(len(starts) - ((length - window) / hop + 1)) <= 1  # about one window per hop
    if hop == window:
        assert starts == window_starts(length, window)  # gen/clap.py's windowing


# --------------------------------------------------------------------------------------------- CLAP

SMALL_CLAP = ClapConfig(embed_dim=32, stem_channels=4, conv_channels=(8, 8), frame_dim=16, temporal_dilations=(2,),
                        projection_hidden=32)


@pytest.fixture(scope="module")
def small_clap() -> SoundsmithClap:
    torch.manual_seed(0)
    model = SoundsmithClap(SMALL_CLAP, text_encoder=SentenceEncoder())
    with torch.no_grad():  # trained-looking BatchNorm statistics, so eval mode is not the identity
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model.eval()


def test_clap_rows_are_windows_of_the_clip_frames(small_clap):
    emb = ClapEmbedder(small_clap)
    assert (emb.sample_rate, emb.dim, emb.window_frames, emb.hop_frames) == (16000, 32, 62, 31)
    assert emb.window_s == pytest.approx(2.48) and emb.hop_s == pytest.approx(1.24)
    wave = tone_and_noise(5.0, 16000)
    out = emb.embed(wave, 16000)
    assert out.dtype == np.float32 and out.shape == (3, 32)  # 125 frames: windows at 0, 32, 63
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    frames = small_clap.audio_frame_features(wave.mean(0, keepdims=True), 16000)[0]  # [125, D']
    assert frames.shape[0] == 125
    for row, start in zip(out, (0, 32, 63)):
        with torch.no_grad():
            ref = small_clap.pool_frames(frames[None, start:start + 62])[0]
        np.testing.assert_allclose(row, ref.numpy(), atol=1e-5)
    assert not np.allclose(out[0], out[2], atol=1e-3)


def test_clap_one_window_equals_gen_clap_embedding(small_clap):
    """A clip of exactly one window is embedded as gen/clap.py embeds a clip (one window of its own)."""
    emb = ClapEmbedder(small_clap)
    wave = noise(1, emb.min_samples, seed=3)  # 39680 samples = 62 frames
    out = emb.embed(wave, 16000)
    assert out.shape == (1, 32)
    np.testing.assert_allclose(out[0], small_clap.embed_audio(wave, 16000)[0].numpy(), atol=1e-5)


def test_clap_mono_mix_resampling_and_padding(small_clap):
    emb = ClapEmbedder(small_clap)
    wave = tone_and_noise(3.0, 16000, seed=1)
    np.testing.assert_allclose(emb.embed(wave, 16000), emb.embed(wave.mean(0, keepdims=True), 16000), atol=1e-5)
    np.testing.assert_allclose(emb.embed(torch.from_numpy(wave), 16000), emb.embed(wave, 16000), atol=1e-6)
    high = tone_and_noise(3.0, 48000, seed=1)
    np.testing.assert_allclose(emb.embed(high, 48000), emb.embed(resample(high, 48000, 16000), 16000), atol=1e-5)
    short = noise(1, 8000, seed=2)  # 0.5 s: padded with silence to one window
    padded = np.pad(short, ((0, 0), (0, emb.min_samples - 8000)))
    assert emb.embed(short, 16000).shape == (1, 32)
    np.testing.assert_allclose(emb.embed(short, 16000), emb.embed(padded, 16000), atol=1e-6)
    out = emb.embed_batch([wave, short], 16000)
    assert [o.shape for o in out] == [(2, 32), (1, 32)]


def test_clap_long_clips_run_in_pieces(small_clap):
    whole = ClapEmbedder(small_clap)
    pieces = ClapEmbedder(small_clap, chunk_s=2.56)  # 64 frames per piece
    wave = noise(1, 16000 * 7, seed=4)
    a, b = whole.embed(wave, 16000), pieces.embed(wave, 16000)
    assert a.shape == b.shape == (len(spread_starts(175, 62, 31)), 32)
    assert np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.2  # only frames next to a piece boundary lose context


def test_shipped_clap_is_the_default(tmp_path):
    emb = get_embedder()
    assert emb.name == "clap" and emb.dim == 512 and emb.checkpoint.endswith("clap")
    out = emb.embed(tone_and_noise(5.0, 16000), 16000)
    assert out.shape == (3, 512)
    info = emb.describe()
    assert {"name", "checkpoint", "weights_fingerprint", "fingerprint", "sample_rate", "window_s", "hop_s",
            "pooling", "dim"} <= set(info)
    json.dumps(info)
    with pytest.raises(ValueError, match="no classifier head; logits come from: panns-cnn14-16k"):
        emb.logits(tone_and_noise(1.0, 16000), 16000)


def test_fingerprint_follows_weights_and_settings(small_clap):
    a = ClapEmbedder(small_clap)
    b = ClapEmbedder(small_clap, hop_frames=20)
    assert a.weights_fingerprint() == b.weights_fingerprint() and a.fingerprint() != b.fingerprint()
    other = SoundsmithClap(SMALL_CLAP, text_encoder=small_clap.text_encoder).eval()
    assert ClapEmbedder(other).weights_fingerprint() != a.weights_fingerprint()
    assert ClapEmbedder(small_clap, checkpoint="/x/y").fingerprint() == a.fingerprint()  # path not part of it


# ------------------------------------------------------------------------------------------- VGGish


@pytest.fixture(scope="module")
def vggish_reference(tmp_path_factory):
    """torchvggish's own (untrained) model with random weights, saved as its published state dict."""
    tv = pytest.importorskip("torchvggish.torchvggish")
    torch.manual_seed(0)
    model = tv._vgg(postprocess=False).eval()
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_vggish_log_mel_patches_match_torchvggish(vggish_reference):
    vggish_input = pytest.importorskip("torchvggish.vggish_input")
    _, path = vggish_reference
    emb = get_embedder("vggish", path)
    wave = tone_and_noise(2.5, 16000)
    ours = emb.patches(wave, 16000)
    ref = vggish_input.waveform_to_examples(wave.mean(0).astype(np.float64), 16000)  # [2, 1, 96, 64]
    assert ours.shape == ref.shape == (2, 1, 96, 64)
    torch.testing.assert_close(ours, ref.detach(), atol=1e-4, rtol=0)


def test_vggish_matches_torchvggish_with_the_same_weights(vggish_reference):
    ref_model, path = vggish_reference
    emb = get_embedder("vggish", path)
    assert (emb.sample_rate, emb.dim, emb.window_s, emb.hop_s) == (16000, 128, 0.96, 0.96)
    wave = tone_and_noise(3.0, 16000, seed=1)
    out = emb.embed(wave, 16000)
    assert out.shape == (3, 128)  # 3 s: three whole 0.96 s patches, the tail dropped
    pre_relu = torch.nn.Sequential(*list(ref_model.embeddings.children())[:-1])  # fadtk's use_activation=False
    with torch.no_grad():
        x = ref_model.features(emb.patches(wave, 16000))
        ref = pre_relu(x.transpose(1, 3).transpose(1, 2).contiguous().flatten(1))
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=0)
    assert (out < 0).any() and np.abs(out).max() > 1e-3  # really before the ReLU, really non-trivial
    short = emb.embed(noise(1, 4000), 16000)  # 0.25 s: padded to one patch
    assert short.shape == (1, 128)


# -------------------------------------------------------------------------------------------- PANNs


def panns_models():
    """`panns_inference.models` without running the package's __init__ (it wgets a label file and writes
    ~/panns_data on import): a bare package module stands in for it while the submodule loads."""
    pytest.importorskip("torchlibrosa")
    spec = importlib.util.find_spec("panns_inference")
    if spec is None:
        pytest.skip("panns-inference is not installed")
    saved = {k: v for k, v in sys.modules.items() if k == "panns_inference" or k.startswith("panns_inference.")}
    package = types.ModuleType("panns_inference")
    package.__path__ = [str(Path(spec.origin).parent)]
    sys.modules["panns_inference"] = package
    try:
        return importlib.import_module("panns_inference.models")
    finally:
        for key in [k for k in sys.modules if k == "panns_inference" or k.startswith("panns_inference.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def random_panns(name: str, seed: int = 0):
    cfg = PANNS_VARIANTS[name]
    torch.manual_seed(seed)
    model = panns_models().Cnn14(cfg.sample_rate, cfg.window_size, cfg.hop_size, cfg.mel_bins, cfg.fmin, cfg.fmax,
                                 527).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for key, buf in model.named_buffers():
            if key.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif key.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for key, p in model.named_parameters():
            if key.startswith("bn0") or ".bn" in key:
                p.normal_(1.0 if key.endswith("weight") else 0.0, 0.2)
    return model


@pytest.fixture(scope="module", params=["panns-cnn14-16k", "panns-cnn14-32k"])
def panns_pair(request, tmp_path_factory):
    """(reference panns_inference model, our embedder loaded from its published-layout checkpoint)."""
    name = request.param
    ref = random_panns(name)
    path = tmp_path_factory.mktemp("panns") / "Cnn14-random.pth"
    torch.save({"model": ref.state_dict(), "iteration": 0}, path)  # the published checkpoint's layout
    return ref, get_embedder(name, path)


def test_panns_matches_panns_inference_with_the_same_weights(panns_pair):
    ref, emb = panns_pair
    sr = PANNS_VARIANTS[emb.name].sample_rate
    assert (emb.sample_rate, emb.dim, emb.n_classes, emb.window_s) == (sr, 2048, 527, 10.0)
    wave = noise(1, int(1.5 * sr), seed=1, scale=0.2)  # shorter than a window: the whole clip, unpadded
    out, logits = emb.embed_and_logits(wave, sr)
    with torch.no_grad():
        expect = ref(torch.from_numpy(wave))
    assert out.shape == (1, 2048) and logits.shape == (1, 527)
    np.testing.assert_allclose(out, expect["embedding"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(logits)).numpy(), expect["clipwise_output"].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(emb.embed(wave, sr), out, atol=1e-6)
    np.testing.assert_allclose(emb.logits(wave, sr), logits, atol=1e-6)


def test_panns_windows_are_evenly_spread(panns_pair):
    ref, loaded = panns_pair
    sr = loaded.sample_rate
    emb = PannsEmbedder(loaded.model, name=loaded.name, window_s=1.0)  # 1 s windows keep the test short
    wave = noise(1, int(2.5 * sr), seed=2, scale=0.2)  # windows at 0, 0.75 s and 1.5 s
    out = emb.embed(wave, sr)
    assert out.shape == (3, 2048)
    starts = [int(f * sr) for f in (0, 0.75, 1.5)]
    with torch.no_grad():
        expect = ref(torch.from_numpy(np.stack([wave[0, s:s + sr] for s in starts])))["embedding"]
    np.testing.assert_allclose(out, expect.numpy(), atol=1e-4, rtol=1e-4)


def test_panns_wrong_variant_and_layout_are_refused(tmp_path):
    state = {"fc1.weight": torch.zeros(2048, 2048),  # the 32 kHz model's DFT kernels (n_fft 1024)
             "spectrogram_extractor.stft.conv_real.weight": torch.zeros(513, 1, 1024)}
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="wrong variant"):
        get_embedder("panns-cnn14-16k", path)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not a PANNs CNN14 checkpoint"):
        get_embedder("panns-cnn14-32k", other)


# --------------------------------------------------------------------------------------- LAION CLAP


@pytest.fixture(scope="module")
def laion_folder(tmp_path_factory):
    from test_clap import tiny_clap_model, tiny_roberta_tokenizer
    from transformers import ClapFeatureExtractor, ClapProcessor

    tokenizer, _, _ = tiny_roberta_tokenizer()
    model = tiny_clap_model(len(tokenizer), fused=False)
    fe = ClapFeatureExtractor(truncation="rand_trunc", max_length_s=2)  # 2 s chunks instead of 10 s: fast
    folder = tmp_path_factory.mktemp("laion")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(folder)
    return folder, model, fe


def test_laion_clap_chunks_match_transformers(laion_folder):
    folder, model, fe = laion_folder
    emb = get_embedder("laion-clap", folder)
    assert (emb.sample_rate, emb.dim, emb.window_s, emb.hop_s) == (48000, 24, 2.0, 1.0)
    wave = noise(1, int(2.5 * 48000), seed=5)
    out = emb.embed(wave, 48000)
    assert out.shape == (3, 24)  # chunks start at 0, 1 and 2 s (fadtk), each zero-padded to 2 s
    chunks = [np.pad(wave[0, s:s + 96000], (0, max(0, s + 96000 - wave.shape[1]))) for s in (0, 48000, 96000)]
    inputs = fe([c.astype(np.float64) for c in chunks], sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_audio_features(input_features=inputs["input_features"],
                                       is_longer=torch.zeros(3, 1, dtype=torch.bool)).pooler_output
    np.testing.assert_allclose(out, F.normalize(ref, dim=-1).numpy(), atol=1e-4, rtol=0)
    low = resample(wave, 48000, 16000)
    np.testing.assert_allclose(emb.embed(low, 16000), emb.embed(resample(low, 16000, 48000), 48000), atol=1e-6)


def test_clap_embedder_refuses_a_transformers_folder(laion_folder):
    folder, _, _ = laion_folder
    with pytest.raises(ValueError, match="use the 'laion-clap' embedder"):
        get_embedder("clap", folder)


# ------------------------------------------------------------------------------------------ EnCodec


def random_encodec(seed: int = 0, **config):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(num_filters=2, hidden_size=8, **config)).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("bias"):
                p.normal_(0, 0.1)
        for key, buf in model.named_buffers():
            if key.endswith("codebook.embed"):
                buf.normal_(0, 0.1)
    return model


def test_encodec_latents_are_what_transformers_quantizes(tmp_path):
    model = random_encodec()  # the encodec_24khz layout, tiny
    model.save_pretrained(tmp_path)
    emb = get_embedder("encodec", tmp_path)
    assert (emb.sample_rate, emb.channels, emb.dim, emb.hop_s) == (24000, 1, 8, 320 / 24000)
    wave = noise(2, 5000, seed=6)  # stereo: mixed to the codec's mono
    out = emb.embed(wave, 24000)
    assert out.shape == (math_ceil(5000, 320), 8)
    mono = torch.from_numpy(wave.mean(0, keepdims=True))[None]  # [1, 1, T]
    with torch.no_grad():
        bandwidth = model.config.target_bandwidths[-1]  # all levels
        codes = model.encode(mono, bandwidth=bandwidth).audio_codes[0]  # [1, K, S]
        latent = torch.from_numpy(out).T[None]  # [1, D, S]
        np.testing.assert_allclose(out, model.encoder(mono)[0].T.numpy(), atol=1e-5)
        # the codes transformers' encode gives are the quantized embedder rows: these are pre-quantization latents
        assert torch.equal(model.quantizer.encode(latent, bandwidth).transpose(0, 1), codes)


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)


def test_encodec_48k_layout_runs_on_stereo_chunks(tmp_path):
    model = random_encodec(seed=1, sampling_rate=48000, audio_channels=2, normalize=True, chunk_length_s=0.02,
                           overlap=0.01)
    model.save_pretrained(tmp_path)
    emb = get_embedder("encodec", tmp_path)
    assert emb.channels == 2 and emb.chunk_length == 960
    wave = noise(2, 2500, seed=7)
    out = emb.embed(wave, 48000)
    x = torch.from_numpy(wave)[None]
    with torch.no_grad():
        ref = torch.cat([model.encoder(x[..., s:s + 960])[0].T for s in (0, 960, 1920)])  # no normalisation
    assert out.shape == (3 + 3 + 2, 8)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    mono = emb.embed(wave[:1], 48000)  # mono input is duplicated to the model's two channels
    np.testing.assert_allclose(mono, emb.embed(np.repeat(wave[:1], 2, 0), 48000), atol=1e-6)


def test_encodec_our_codec_folder(tmp_path):
    from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig

    torch.manual_seed(0)
    codec = NeuralCodec(NeuralCodecConfig(num_filters=2, hidden_size=4, n_levels=2, codebook_size=16)).eval()
    codec.save_pretrained(tmp_path)
    emb = get_embedder("encodec", tmp_path)
    wave = noise(1, 3200, seed=8)
    with torch.no_grad():
        ref = codec(torch.from_numpy(wave)[None], quantize=False).latent[0].T
    np.testing.assert_allclose(emb.embed(wave, 16000), ref.numpy(), atol=1e-5)
    assert emb.describe()["window_s"] == 0.02


# ------------------------------------------------------------------------------------------- errors


def test_registry_and_bad_names_or_checkpoints(tmp_path, vggish_reference):
    assert list(EMBEDDERS)[0] == "clap" and {"vggish", "panns-cnn14-16k", "panns-cnn14-32k", "laion-clap",
                                             "encodec"} <= set(EMBEDDERS)
    with pytest.raises(ValueError, match=r"unknown embedder 'fad'; known: clap, vggish, panns-cnn14-16k"):
        get_embedder("fad")
    for name in ("vggish", "panns-cnn14-16k", "laion-clap", "encodec"):
        with pytest.raises(ValueError, match=f"embedder '{name}' needs checkpoint="):
            get_embedder(name)
    with pytest.raises(FileNotFoundError, match="vggish checkpoint not found"):
        get_embedder("vggish", tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="clap checkpoint folder not found"):
        get_embedder("clap", tmp_path / "nope")
    pickled = tmp_path / "pickled.pth"
    torch.save({"features.0.weight": torch.zeros(1), "meta": Fraction(1, 3)}, pickled)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        get_embedder("vggish", pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth: missing key 'features.0.bias'"):
        get_embedder("vggish", wrong)
    with pytest.raises(ValueError, match="laion-clap needs a transformers ClapModel folder"):
        get_embedder("laion-clap", wrong)
    with pytest.raises(ValueError, match="device must be"):
        get_embedder("vggish", vggish_reference[1], device="tpu")


def test_bad_audio(small_clap):
    emb = ClapEmbedder(small_clap)
    with pytest.raises(ValueError, match=r"one clip shaped \[channels, samples\]"):
        emb.embed(noise(2, 1, 16000), 16000)
    with pytest.raises(ValueError, match=r"one clip shaped \[channels, samples\]"):
        emb.embed(noise(16000), 16000)
    nan = noise(1, 16000)
    nan[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        emb.embed(nan, 16000)
    with pytest.raises(ValueError, match="empty"):
        emb.embed(np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate must be"):
        emb.embed(noise(1, 16000), 0)
    with pytest.raises(ValueError, match="numpy array or torch tensor"):
        emb.embed([[0.0] * 100], 16000)
    silent = emb.embed(np.zeros((1, 32000), np.float32), 16000)  # silence embeds to finite rows
    assert np.isfinite(silent).all()
