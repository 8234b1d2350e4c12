"""MelLatentCodec (wave <-> latent) and the codec reconstruction report on a tiny corpus."""

import json
import logging

import numpy as np
import pytest
import torch
from soundsmith.codecs.audio import write_audio
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig
from soundsmith.eval.codec_report import (
    codec_report_dict,
    load_codec,
    multi_resolution_stft,
    read_split,
    si_sdr,
)

from soundsmith.cli import main

SR = 16_000


def tiny_codec(seed: int = 0) -> MelLatentCodec:
    torch.manual_seed(seed)
    vae = MelVAE(MelVAEConfig(n_mels=16, block_out_channels=(8, 16, 16), norm_num_groups=4, scaling_factor=0.5))
    voc = Vocoder(VocoderConfig(model_in_dim=16, upsample_initial_channel=32, resblock_kernel_sizes=(3,),
                                resblock_dilation_sizes=((1, 3),), mel={"n_mels": 16}))
    return MelLatentCodec(vae, voc).eval()


@pytest.fixture
def corpus(tmp_path):
    """Six 0.5 s clips: music/sfx/speech in test, one in train; a metadata.jsonl like `soundsmith data synth`'s."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (domain, split) in enumerate([("music", "test"), ("sfx", "test"), ("speech", "test"),
                                         ("music", "test"), ("sfx", "test"), ("music", "train")]):
        t = np.arange(SR // 2) / SR
        wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.02 * rng.standard_normal(t.size)
        name = f"{split}/{i:06d}.wav"
        (tmp_path / split).mkdir(exist_ok=True)
        write_audio(tmp_path / name, wave[None].astype(np.float32), SR)
        rows.append({"file_name": name, "caption": "x", "domain": domain, "labels": {}, "duration": 0.5,
                     "sample_rate": SR, "seed": 0, "split": split, "index": i})
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


@torch.no_grad()
def test_codec_shapes_padding_and_round_trip(tmp_path, caplog):
    codec = tiny_codec()
    assert codec.sample_rate == SR and codec.frame_rate == 25.0 and codec.samples_per_latent_frame == 640
    wave = torch.randn(2, 2, 1000) * 0.1  # stereo, 1000 samples: not a whole latent frame
    with caplog.at_level(logging.INFO, logger="soundsmith.codecs.mel_codec"):
        latent = codec.encode(wave)
    assert "padding 1000 samples to 1280" in caplog.text
    assert latent.shape == (2, 8, 2, 4)  # [B, 8, ceil(T / 640), F / 4]
    assert codec.decode(latent).shape == (2, 1, 1280)
    assert codec.reconstruct(wave).shape == (2, 1, 1000)  # cropped back
    # the latent is the VAE posterior mean times scaling_factor
    mel = codec.wave_to_mel(wave, SR)
    assert torch.allclose(latent, codec.vae.encode(mel).mean * 0.5)
    # other sample rates are resampled first
    assert codec.encode(torch.randn(1, 1, 2205) * 0.1, 22_050).shape == (1, 8, 3, 4)

    codec.save_pretrained(tmp_path / "codec", dtype=torch.float16)
    again = MelLatentCodec.from_pretrained(tmp_path / "codec")
    assert isinstance(load_codec(tmp_path / "codec"), MelLatentCodec)
    assert (again.decode(latent) - codec.decode(latent)).abs().max() < 0.05  # fp16 weights


@torch.no_grad()
def test_diffusers_pipeline_folder_loads(tmp_path):
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    codec = tiny_codec()
    folder = tmp_path / "audioldm"
    (folder / "vae").mkdir(parents=True)
    cfg = codec.vae.config
    ref_vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=cfg.block_out_channels,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            layers_per_block=1, norm_num_groups=4, scaling_factor=0.5)
    ref_vae.load_state_dict(codec.vae.autoencoder.state_dict())
    ref_vae.save_pretrained(folder / "vae")
    ref_voc = SpeechT5HifiGan(codec.vocoder.config.to_transformers())
    ref_voc.load_state_dict(codec.vocoder.hifigan.state_dict())
    ref_voc.save_pretrained(folder / "vocoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    loaded = load_codec(folder)
    wave = torch.randn(1, 1, 1280) * 0.1
    assert (loaded.reconstruct(wave) - codec.reconstruct(wave)).abs().max() <= 1e-5


def test_mismatched_pair_is_refused():
    vae = MelVAE(MelVAEConfig(n_mels=16, block_out_channels=(8, 16, 16), norm_num_groups=4))
    with pytest.raises(ValueError, match="takes 64-bin mels .* this codec makes 16-bin mels"):
        MelLatentCodec(vae, Vocoder())


def test_metrics():
    torch.manual_seed(0)
    x = torch.randn(8000)
    assert si_sdr(x, 0.5 * x) > 60  # scale-invariant
    assert abs(si_sdr(x, x + torch.randn(8000)) - 0.0) < 0.3  # equal-power noise: ~0 dB
    assert multi_resolution_stft(x, x) == pytest.approx(0.0, abs=1e-6)
    assert multi_resolution_stft(x, 0.5 * x) > 0.5


def test_read_split(corpus, tmp_path):
    rows = read_split(corpus, "test", num_clips=3)
    assert sorted(r["domain"] for r in rows) == ["music", "sfx", "speech"]  # round-robin over domains
    assert len(read_split(corpus, "test")) == 5
    with pytest.raises(ValueError, match="no clips in split 'valid'"):
        read_split(corpus, "valid")
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        read_split(tmp_path / "test", "test")


def test_report_and_cli(corpus, tmp_path, capsys):
    tiny_codec().save_pretrained(tmp_path / "codec")
    report = codec_report_dict(tmp_path / "codec", corpus, num_clips=4)
    assert report["clips"] == 4 and set(report["domains"]) == {"music", "sfx", "speech", "all"}
    all_ = report["domains"]["all"]
    assert all_["clips"] == 4 and all_["seconds"] == pytest.approx(2.0)
    for key in ("mel_l1", "mrstft", "si_sdr_db", "rtf_encode", "rtf_decode"):
        assert np.isfinite(all_[key]), key
    assert all_["rtf_encode"] > 0 and all_["rtf_decode"] > 0

    assert main(["eval", "codec", "--model", str(tmp_path / "codec"), "--data", str(corpus), "--num-clips", "1"]) == 0
    text = capsys.readouterr().out  # the table of codec_report()
    assert "mel L1" in text and "SI-SDR" in text and "\nall " in text
    assert main(["eval", "codec", "--model", str(tmp_path / "nope"), "--data", str(corpus)]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert main(["eval", "codec", "--model", str(tmp_path / "codec"), "--data", str(corpus), "--levels", "3"]) == 2
    assert "MelLatentCodec, which has no RVQ levels" in capsys.readouterr().err
    # an RVQ codec with fewer levels: a coarser reconstruction, named in the header; out of range: one line
    from token_helpers import tiny_codec as tiny_rvq_codec

    tiny_rvq_codec().save_pretrained(tmp_path / "rvq")
    full = codec_report_dict(tmp_path / "rvq", corpus, num_clips=4)
    coarse = codec_report_dict(tmp_path / "rvq", corpus, num_clips=4, levels=1)
    assert coarse["levels"] == 1 and full["levels"] == tiny_rvq_codec().n_levels > 1
    assert coarse["domains"]["all"]["mel_l1"] != pytest.approx(full["domains"]["all"]["mel_l1"])
    assert main(["eval", "codec", "--model", str(tmp_path / "rvq"), "--data", str(corpus), "--num-clips", "1",
                 "--levels", "1"]) == 0
    assert "1 RVQ levels" in capsys.readouterr().out
    assert main(["eval", "codec", "--model", str(tmp_path / "rvq"), "--data", str(corpus), "--levels", "99"]) == 2
    assert "--levels 99 is out of range" in capsys.readouterr().err
    # a mel-domain codec decodes through another vocoder on request; a waveform codec refuses one
    other = codec_report_dict(tmp_path / "codec", corpus, num_clips=4, vocoder="griffin-lim")
    assert other["domains"]["all"]["mel_l1"] != pytest.approx(all_["mel_l1"])
    assert main(["eval", "codec", "--model", str(tmp_path / "rvq"), "--data", str(corpus), "--vocoder",
                 "griffin-lim"]) == 2
    assert "which decodes waveforms itself" in capsys.readouterr().err
    (corpus / "test" / "000000.wav").unlink()
    assert main(["eval", "codec", "--model", str(tmp_path / "codec"), "--data", str(corpus)]) == 2
    assert "audio file not found" in capsys.readouterr().err
