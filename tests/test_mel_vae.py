"""MelVAE: shapes, save/load round trip, and a published diffusers AutoencoderKL folder loading as is."""

import json

import pytest
import torch
from soundsmith.codecs.mel import MelConfig
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig

TINY = MelVAEConfig(n_mels=16, latent_channels=8, block_out_channels=(8, 16, 16), layers_per_block=1,
                    norm_num_groups=4)


def tiny_vae(seed: int = 0) -> MelVAE:
    torch.manual_seed(seed)
    return MelVAE(TINY).eval()


def test_shapes_and_forward():
    vae = tiny_vae()
    mel = torch.randn(2, 16, 24)  # [B, F, S]
    posterior = vae.encode(mel)
    assert posterior.mean.shape == (2, 8, 6, 4)  # [B, 8, S/4, F/4]
    assert vae.decode(posterior.mean).shape == (2, 16, 24)
    recon, post = vae(mel, generator=torch.Generator().manual_seed(0))
    assert recon.shape == mel.shape and post.kl().shape == (2,)


def test_bad_input_and_config():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(torch.randn(1, 16, 10))
    with pytest.raises(ValueError, match="F=16"):
        vae.encode(torch.randn(1, 64, 8))
    with pytest.raises(ValueError, match="n_mels"):
        MelVAEConfig(n_mels=62)
    with pytest.raises(ValueError, match="norm_num_groups"):
        MelVAEConfig(block_out_channels=(8, 16, 16))
    with pytest.raises(ValueError, match="unknown field 'bogus'"):
        MelVAEConfig.from_dict({"bogus": 1})


def test_save_load_round_trip(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    again = MelVAE.from_pretrained(tmp_path / "vae")
    assert again.config == vae.config
    z = torch.randn(1, 8, 5, 4)
    assert torch.equal(again.decode(z), vae.decode(z))
    vae.save_pretrained(tmp_path / "half", dtype=torch.float16)  # the shipped format
    half = MelVAE.from_pretrained(tmp_path / "half")
    assert next(half.parameters()).dtype == torch.float32
    assert (half.decode(z) - vae.decode(z)).abs().max() < 1e-2


@torch.no_grad()
def test_diffusers_folder_matches_diffusers(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    ref = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=2, norm_num_groups=4, scaling_factor=0.9392935633659363).eval()
    # Random GroupNorm affine params too, so a norm mapped to the wrong place would show.
    for p in ref.parameters():
        p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "vae")  # diffusion_pytorch_model.safetensors + config.json
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    ours = MelVAE.from_pretrained(tmp_path / "vae", mel=MelConfig(n_mels=16))
    assert ours.config.scaling_factor == pytest.approx(0.9392935633659363)
    assert ours.config.layers_per_block == 2

    mel = torch.randn(2, 16, 32)  # [B, F, S]
    image = mel.transpose(1, 2)[:, None]  # [B, 1, S, F], as AudioLDM feeds its VAE
    ref_post = ref.encode(image).latent_dist
    our_post = ours.encode(mel)
    assert (our_post.mean - ref_post.mean).abs().max() <= 1e-4
    assert (our_post.logvar - ref_post.logvar).abs().max() <= 1e-4
    z = torch.randn(2, 8, 8, 4)
    expected = ref.decode(z).sample[:, 0].transpose(1, 2)
    assert (ours.decode(z) - expected).abs().max() <= 1e-4


def test_diffusers_folder_bad_config(tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "in_channels": 3,
                                                    "block_out_channels": [8]}))
    with pytest.raises(ValueError, match="in_channels=3"):
        MelVAE.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        MelVAE.from_pretrained(tmp_path / "nope")


def test_wrong_architecture_and_corrupt_file(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg["layers_per_block"] = 2
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model\.safetensors: missing key 'encoder\.down_blocks\.0\.resnets\.1"):
        MelVAE.from_pretrained(tmp_path / "a")
    tiny_vae().save_pretrained(tmp_path / "b")
    weights = tmp_path / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        MelVAE.from_pretrained(tmp_path / "b")
