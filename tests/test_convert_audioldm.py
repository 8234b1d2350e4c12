"""An original AudioLDM `.ckpt` (Lightning dict, latent-diffusion names) loads through our key converter.

The tiny checkpoint is built from a diffusers AutoencoderKL and a transformers SpeechT5HifiGan by
renaming their keys back to the original names with `to_original` below, written by hand here
independently of the converter; outputs are compared with the two reference libraries.
"""

import argparse
import re

import pytest
import torch
from diffusers import AutoencoderKL
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.pipelines import convert_audioldm as conv
from soundsmith.pipelines.convert import CONVERTERS
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

N_BLOCKS = 3


def to_original(key: str) -> str:
    """diffusers AutoencoderKL key -> latent-diffusion key (the inverse of the converter, by hand)."""
    parts = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
        (r"\.mid_block\.attentions\.0\.to_q\.", ".mid.attn_1.q."),
        (r"\.mid_block\.attentions\.0\.to_k\.", ".mid.attn_1.k."),
        (r"\.mid_block\.attentions\.0\.to_v\.", ".mid.attn_1.v."),
        (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
    ]
    for pattern, repl in parts:
        key = re.sub(pattern, repl, key)
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", key)
    if m:  # latent-diffusion builds the decoder's up list bottom-up, diffusers top-down
        i = N_BLOCKS - 1 - int(m.group(1))
        key = f"decoder.up.{i}.block.{m.group(3)}.{m.group(4)}" if m.group(2) == "resnets" \
            else f"decoder.up.{i}.upsample.{m.group(4)}"
    return key


def reference_models(seed=0):
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(32, 32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=2).eval()  # 32 GroupNorm groups, as latent-diffusion hard-codes
    voc = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16000, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)).eval()
    with torch.no_grad():  # every tensor distinct and non-trivial, so a misplaced key changes the output
        for p in list(vae.parameters()) + list(voc.parameters()):
            p.add_(0.2 * torch.randn_like(p))
    return vae, voc


def original_checkpoint(vae, voc, extra=None):
    sd = {}
    for key, value in vae.state_dict().items():
        if re.search(r"attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", key):
            value = value[:, :, None, None]  # latent-diffusion's attention uses 1x1 convs
        sd["first_stage_model." + to_original(key)] = value.clone()
    for key, value in voc.state_dict().items():
        if key in ("mean", "scale"):
            continue  # AudioLDM's vocoder has no normalisation buffers
        sd["first_stage_model.vocoder." + key.replace("upsampler.", "ups.")] = value.clone()
    sd["scale_factor"] = torch.tensor(0.9392935633659363)
    # parts the first-stage converter must leave alone
    sd["first_stage_model.loss.logvar"] = torch.zeros(())
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(4, 8, 3, 3)
    sd["cond_stage_model.model.logit_scale_a"] = torch.ones(())
    return {"state_dict": sd, "epoch": 3, "global_step": 1000, **(extra or {})}


@pytest.fixture(scope="module")
def refs():
    return reference_models()


@torch.no_grad()
def check_against_reference(codec: MelLatentCodec, vae, voc) -> None:
    assert codec.scaling_factor == pytest.approx(0.9392935633659363)
    mel = torch.randn(2, 16, 24)  # [B, F, S]
    image = mel.transpose(1, 2)[:, None]  # [B, 1, S, F]
    ref_post = vae.encode(image).latent_dist
    our_post = codec.vae.encode(mel)
    assert (our_post.mean - ref_post.mean).abs().max() <= 1e-4
    assert (our_post.logvar - ref_post.logvar).abs().max() <= 1e-4
    z = torch.randn(2, 8, 6, 4)
    assert (codec.vae.decode(z) - vae.decode(z).sample[:, 0].transpose(1, 2)).abs().max() <= 1e-4
    expected = voc(mel.transpose(1, 2))[:, : 24 * 160]  # diffusers' AudioLDM pipeline crops the same way
    assert (codec.vocoder(mel) - expected).abs().max() <= 1e-4


def test_ckpt_loads_strict_and_matches(tmp_path, refs):
    vae, voc = refs
    path = tmp_path / "audioldm-tiny.ckpt"
    torch.save(original_checkpoint(vae, voc), path)
    codec = conv.load_audioldm_codec(path)
    assert codec.vae.config.block_out_channels == (32, 32, 64) and codec.vae.config.layers_per_block == 2
    # every converted tensor lands exactly where diffusers keeps it
    ours = codec.vae.autoencoder.state_dict()
    for key, value in vae.state_dict().items():
        assert torch.equal(ours[key], value), key
    check_against_reference(codec, vae, voc)

    out = CONVERTERS["audioldm"]()(path, tmp_path / "converted", trust_pickle=False)
    check_against_reference(MelLatentCodec.from_pretrained(out), vae, voc)


def _swap_mid_resnets(original, key, n):
    new = original(key, n) or ""
    return re.sub(r"mid_block\.resnets\.([01])\.", lambda m: f"mid_block.resnets.{1 - int(m.group(1))}.", new)


def _unreversed(original, key, n):
    new = original(key, n) or ""
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(.*)$", new)
    return f"decoder.up_blocks.{n - 1 - int(m.group(1))}.{m.group(2)}" if m else new


@pytest.mark.parametrize("mutation, error", [
    ("swap_q_k", AssertionError),  # same shapes: only the output comparison can see it
    ("swap_mid_resnets", AssertionError),
    ("decoder_not_reversed", ValueError),  # widths differ: the strict shape check names the key
])
def test_a_wrong_mapping_is_caught(tmp_path, refs, monkeypatch, mutation, error):
    """The checks above are sensitive: a converter with one wrong rename fails them."""
    vae, voc = refs
    path = tmp_path / "a.ckpt"
    torch.save(original_checkpoint(vae, voc), path)
    original = conv.vae_key
    if mutation == "swap_q_k":
        monkeypatch.setitem(conv._ATTN_PARTS, "q", "to_k")
        monkeypatch.setitem(conv._ATTN_PARTS, "k", "to_q")
    elif mutation == "swap_mid_resnets":
        monkeypatch.setattr(conv, "vae_key", lambda key, n: _swap_mid_resnets(original, key, n))
    else:
        monkeypatch.setattr(conv, "vae_key", lambda key, n: _unreversed(original, key, n))
    with pytest.raises(error):
        check_against_reference(conv.load_audioldm_codec(path), vae, voc)


def test_pickle_refused_unless_trusted(tmp_path, refs):
    path = tmp_path / "lightning.ckpt"
    torch.save(original_checkpoint(*refs, extra={"hyper_parameters": argparse.Namespace(lr=1e-4)}), path)
    with pytest.raises(ValueError, match=r"lightning\.ckpt: needs full unpickling.*trust_pickle=True"):
        conv.load_audioldm_codec(path)
    codec = conv.load_audioldm_codec(path, trust_pickle=True)
    check_against_reference(codec, *refs)


def test_bad_checkpoints(tmp_path, refs):
    vae, voc = refs
    good = original_checkpoint(vae, voc)
    path = tmp_path / "x.ckpt"

    torch.save(good, path)
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ValueError, match=r"cut\.ckpt: corrupt or truncated"):
        conv.load_audioldm_codec(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"junk\.ckpt: corrupt or truncated"):
        conv.load_audioldm_codec(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        conv.load_audioldm_codec(tmp_path / "missing.ckpt")

    missing = {**good, "state_dict": dict(good["state_dict"])}
    del missing["state_dict"]["first_stage_model.decoder.conv_out.bias"]
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"x\.ckpt \[first_stage_model\.\*\]: missing key 'decoder\.conv_out\.bias'"):
        conv.load_audioldm_codec(path)

    missing = {**good, "state_dict": dict(good["state_dict"])}
    del missing["state_dict"]["first_stage_model.vocoder.conv_post.weight"]
    torch.save(missing, path)
    with pytest.raises(ValueError, match=r"x\.ckpt \[first_stage_model\.vocoder\.\*\]: missing key 'conv_post\.weight'"):
        conv.load_audioldm_codec(path)

    rgb = {**good, "state_dict": dict(good["state_dict"])}
    rgb["state_dict"]["first_stage_model.encoder.conv_in.weight"] = torch.randn(32, 3, 3, 3)
    torch.save(rgb, path)
    with pytest.raises(ValueError, match=r"x\.ckpt: 'first_stage_model\.encoder\.conv_in\.weight' takes 3 channels"):
        conv.load_audioldm_codec(path)

    extra = {**good, "state_dict": dict(good["state_dict"])}
    extra["state_dict"]["first_stage_model.encoder.down.0.attn.0.q.weight"] = torch.randn(32, 32, 1, 1)
    torch.save(extra, path)
    with pytest.raises(ValueError, match=r"unexpected key 'first_stage_model\.encoder\.down\.0\.attn\.0\.q\.weight'"):
        conv.load_audioldm_codec(path)

    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="no 'first_stage_model"):
        conv.load_audioldm_codec(path)


def test_cli_convert(tmp_path, refs, capsys):
    from soundsmith.cli import main

    path = tmp_path / "lightning.ckpt"
    torch.save(original_checkpoint(*refs, extra={"hyper_parameters": argparse.Namespace(lr=1e-4)}), path)
    assert main(["convert", "audioldm", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs full unpickling" in err[0] and "--trust-pickle" in err[0]
    assert main(["convert", "audioldm", str(path), str(tmp_path / "out"), "--trust-pickle"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    check_against_reference(MelLatentCodec.from_pretrained(tmp_path / "out"), *refs)
