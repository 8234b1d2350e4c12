"""Vocoder: exact output length, weight norm, save/load, and a transformers SpeechT5HifiGan folder as is."""

import copy
import json

import pytest
import torch
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig

TINY = VocoderConfig(model_in_dim=16, upsample_rates=(5, 4, 2, 2, 2), upsample_kernel_sizes=(11, 8, 4, 4, 4),
                     upsample_initial_channel=32, resblock_kernel_sizes=(3, 5),
                     resblock_dilation_sizes=((1, 3), (1, 3)),
                     mel={"n_mels": 16})


def tiny_vocoder(seed: int = 0) -> Vocoder:
    torch.manual_seed(seed)
    return Vocoder(TINY).eval()


def test_length_is_frames_times_hop():
    voc = tiny_vocoder()
    wave = voc(torch.randn(2, 16, 7))
    assert wave.shape == (2, 7 * 160) and wave.abs().max() <= 1.0
    with pytest.raises(ValueError, match="F=16"):
        voc(torch.randn(2, 64, 7))


def test_config_checks():
    with pytest.raises(ValueError, match="must be >= rate"):
        VocoderConfig(upsample_kernel_sizes=(3, 8, 4, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        VocoderConfig(upsample_initial_channel=100)
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        VocoderConfig.from_dict({"nope": 1})


def test_matches_transformers_forward_and_gradients():
    voc = tiny_vocoder()
    mel = torch.randn(2, 16, 9, requires_grad=True)
    ours = voc(mel)
    ours.square().sum().backward()
    grad = mel.grad.clone()
    mel.grad = None
    ref = voc.hifigan(mel.transpose(1, 2))  # transformers' own forward, [B, S, F] input
    ref.square().sum().backward()
    assert (ours - ref).abs().max() <= 1e-6
    assert (grad - mel.grad).abs().max() <= 1e-5


def test_weight_norm_round_trip(tmp_path):
    voc = tiny_vocoder()
    mel = torch.randn(1, 16, 5)
    with torch.no_grad():
        before = voc(mel)
        voc.apply_weight_norm()
        assert any("parametrizations" in k for k in voc.state_dict())
        assert (voc(mel) - before).abs().max() <= 1e-6
        voc.save_pretrained(tmp_path / "v")  # folds the weight norm
        loaded = Vocoder.from_pretrained(tmp_path / "v")
        assert (loaded(mel) - before).abs().max() <= 1e-6
        voc.remove_weight_norm()
        assert not any("parametrizations" in k for k in voc.state_dict())
    assert loaded.config == voc.config


@torch.no_grad()
def test_transformers_folder_matches_transformers(tmp_path):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(2)
    config = SpeechT5HifiGanConfig(model_in_dim=16, sampling_rate=16000, upsample_initial_channel=32,
                                   upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                                   resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                                   normalize_before=False)
    ref = SpeechT5HifiGan(config).eval()
    for p in ref.parameters():
        p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "vocoder")  # model.safetensors + config.json, as in the AudioLDM repos
    ours = Vocoder.from_pretrained(tmp_path / "vocoder")
    assert ours.config.upsample_kernel_sizes == (16, 16, 8, 4, 4)
    mel = torch.randn(2, 16, 11)
    expected = ref(mel.transpose(1, 2))  # transformers takes [B, S, F]
    assert expected.shape == (2, 11 * 160 + 32)  # odd kernel - rate: AudioLDM's vocoder makes 32 extra samples
    expected = expected[:, : 11 * 160]  # which diffusers' AudioLDM pipeline crops at the end
    got = ours(mel)
    assert got.shape == (2, 11 * 160)
    assert (got - expected).abs().max() <= 1e-4


def test_bad_folders(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="neither a soundsmith 'Vocoder'"):
        Vocoder.from_pretrained(folder)
    tiny_vocoder().save_pretrained(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["upsample_initial_channel"] = 64
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"key 'conv_pre\.weight' has shape \[32, 16, 7\]"):
        Vocoder.from_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        Vocoder.from_pretrained(tmp_path / "w")


def test_remove_weight_norm_spares_a_deepcopy():
    """torch's remove_parametrizations edits a class that deepcopies share; an EMA copy must survive."""
    voc = tiny_vocoder()
    voc.apply_weight_norm()
    ema = copy.deepcopy(voc)
    mel = torch.randn(1, 16, 3)
    with torch.no_grad():
        expected = voc(mel)
        ema.remove_weight_norm()
        assert (voc(mel) - expected).abs().max() == 0 and (ema(mel) - expected).abs().max() <= 1e-6
        voc.remove_weight_norm()
        assert (voc(mel) - expected).abs().max() <= 1e-6
