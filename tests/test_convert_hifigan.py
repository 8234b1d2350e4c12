"""An original jik876/hifi-gan generator checkpoint loads into our Vocoder with weight norm folded.

The reference is a small re-implementation of jik876's `models.py` Generator (ResBlock1), written here
independently of transformers, run with its weight-norm parameters live.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from soundsmith.codecs.vocoder import Vocoder
from soundsmith.pipelines.convert_hifigan import convert_hifigan, load_hifigan
from torch import nn

LRELU_SLOPE = 0.1
H = {  # a tiny jik876-style config.json (V1 keys; 22.05 kHz, hop 256)
    "resblock": "1", "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002,
    "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4], "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "segment_size": 8192, "num_mels": 20, "num_freq": 1025, "n_fft": 1024, "hop_size": 256, "win_size": 1024,
    "sampling_rate": 22050, "fmin": 0, "fmax": 8000, "fmax_for_loss": None,
}


def old_weight_norm(module: nn.Module) -> nn.Module:
    return torch.nn.utils.weight_norm(module)  # -> weight_g / weight_v, as in jik876's files


def new_weight_norm(module: nn.Module) -> nn.Module:
    return torch.nn.utils.parametrizations.weight_norm(module)  # -> parametrizations.weight.original0/1


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    def __init__(self, channels, kernel_size, dilation, wn):
        super().__init__()
        self.convs1 = nn.ModuleList([wn(nn.Conv1d(channels, channels, kernel_size, 1, dilation=d,
                                                  padding=get_padding(kernel_size, d))) for d in dilation])
        self.convs2 = nn.ModuleList([wn(nn.Conv1d(channels, channels, kernel_size, 1, dilation=1,
                                                  padding=get_padding(kernel_size, 1))) for _ in dilation])

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            xt = c1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            xt = c2(xt)
            x = xt + x
        return x


class Generator(nn.Module):
    def __init__(self, h, wn):
        super().__init__()
        self.num_kernels = len(h["resblock_kernel_sizes"])
        self.num_upsamples = len(h["upsample_rates"])
        ch0 = h["upsample_initial_channel"]
        self.conv_pre = wn(nn.Conv1d(h["num_mels"], ch0, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
            self.ups.append(wn(nn.ConvTranspose1d(ch0 // (2 ** i), ch0 // (2 ** (i + 1)), k, u, padding=(k - u) // 2)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = ch0 // (2 ** (i + 1))
            for k, d in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock1(ch, k, d, wn))
        self.conv_post = wn(nn.Conv1d(ch, 1, 7, 1, padding=3))

    def forward(self, x):  # [B, num_mels, S] -> [B, 1, S * hop]
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x)
                xs = y if xs is None else xs + y
            x = xs / self.num_kernels
        x = F.leaky_relu(x)
        x = self.conv_post(x)
        return torch.tanh(x)


def write_release(folder, wn=old_weight_norm, seed=0, config=H):
    """A jik876 release folder: `g_00000100` ({'generator': state_dict}) + `config.json`."""
    torch.manual_seed(seed)
    gen = Generator(config, wn).eval()
    with torch.no_grad():
        for name, p in gen.named_parameters():  # random g (not the init's ||v||) so folding matters
            p.copy_(torch.rand_like(p) + 0.5 if name.endswith(("weight_g", "original0")) else 0.3 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": gen.state_dict()}, folder / "g_00000100")
    (folder / "config.json").write_text(json.dumps(config))
    return gen


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("wn", [old_weight_norm, new_weight_norm], ids=["weight_g_v", "parametrizations"])
@torch.no_grad()
def test_generator_matches_reference(tmp_path, wn):
    gen = write_release(tmp_path / "release", wn)
    keys = set(torch.load(tmp_path / "release" / "g_00000100", weights_only=True)["generator"])
    assert ("conv_pre.weight_g" in keys) == (wn is old_weight_norm)
    vocoder = load_hifigan(tmp_path / "release")  # the folder: picks g_*, reads config.json
    assert vocoder.config.sampling_rate == 22050 and vocoder.config.mel.hop_length == 256
    mel = torch.randn(2, 20, 9)
    expected = gen(mel)[:, 0]  # weight norm live in the reference
    got = vocoder(mel)
    assert got.shape == expected.shape == (2, 9 * 256)
    assert (got - expected).abs().max() <= 1e-4
    assert expected.abs().max() > 0.05  # not a degenerate all-zero comparison

    out = convert_hifigan(tmp_path / "release" / "g_00000100", tmp_path / "ours")
    again = Vocoder.from_pretrained(out)
    assert (again(mel) - expected).abs().max() <= 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_bad_checkpoints(tmp_path):
    write_release(tmp_path / "r")
    ckpt = tmp_path / "r" / "g_00000100"
    sd = torch.load(ckpt, weights_only=True)["generator"]

    with pytest.raises(ValueError, match="missing key 'generator'"):
        torch.save({"model": sd}, tmp_path / "r" / "g_1")
        load_hifigan(tmp_path / "r" / "g_1")
    broken = dict(sd)
    del broken["conv_post.weight_g"]
    torch.save({"generator": broken}, tmp_path / "r" / "g_2")
    with pytest.raises(ValueError, match=r"g_2: missing key 'conv_post\.weight_g'"):
        load_hifigan(tmp_path / "r" / "g_2")
    ckpt.with_name("g_3").write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(ValueError, match="g_3: corrupt or truncated"):
        load_hifigan(tmp_path / "r" / "g_3")

    bigger = dict(H, upsample_initial_channel=64)  # a checkpoint of another width
    (tmp_path / "r" / "config.json").write_text(json.dumps(bigger))
    with pytest.raises(ValueError, match=r"g_00000100 \['generator'\]: key 'conv_pre\.weight' has shape"):
        load_hifigan(ckpt)
    (tmp_path / "r" / "config.json").write_text(json.dumps(dict(H, resblock="2")))
    with pytest.raises(ValueError, match="resblock='2' is not supported"):
        load_hifigan(ckpt)
    (tmp_path / "r" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no HiFi-GAN config.json"):
        load_hifigan(ckpt)
