"""Our VAE decode and vocoder beside diffusers' AutoencoderKL / transformers' SpeechT5HifiGan, same weights.

    .venv/bin/python benchmarks/bench_vae_vocoder.py [--seconds 5.12] [--repeats 3] [--device cpu] [--threads N]

For two sizes (AudioLDM-S's and our shipped default) it builds the reference model with random
weights, loads the very same weights into ours, checks the outputs agree, then times one decode of
`--seconds` of audio (batch 1) for each, alternating reference and ours `--repeats` times after a
warm-up, and prints the best wall and process-CPU time of each, the ratios ours / reference (target
<= 1.0) and our real-time factor (wall seconds per audio second). On a shared machine the CPU-time
ratio with `--threads 1` is the steadier figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig

SIZES = {
    # AudioLDM-S (cvssp/audioldm-s-full-v2): vae/config.json and vocoder/config.json
    "audioldm-s": (
        MelVAEConfig(block_out_channels=(128, 256, 512), layers_per_block=2, latent_channels=8),
        VocoderConfig(upsample_rates=(5, 4, 2, 2, 2), upsample_kernel_sizes=(16, 16, 8, 4, 4),
                      upsample_initial_channel=1024),
    ),
    "soundsmith-default": (MelVAEConfig(), VocoderConfig()),
}


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def race(ref: Callable[[], torch.Tensor], ours: Callable[[], torch.Tensor], repeats: int,
         device: torch.device) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, CPU) seconds of reference and ours, alternating calls after one warm-up each."""
    ref(), ours()
    t_ref, t_ours = [], []
    for _ in range(repeats):  # alternate, so that load on a shared machine hits both alike
        t_ref.append(timed(ref, device))
        t_ours.append(timed(ours, device))
    best = lambda ts: (min(t[0] for t in ts), min(t[1] for t in ts))  # noqa: E731
    return best(t_ref), best(t_ours)


@torch.no_grad()
def bench_size(name: str, seconds: float, repeats: int, device: torch.device) -> None:
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    vae_cfg, voc_cfg = SIZES[name]
    torch.manual_seed(0)
    ours_vae = MelVAE(vae_cfg).to(device).eval()
    ref_vae = AutoencoderKL.from_config(ours_vae.autoencoder.config).to(device).eval()
    ref_vae.load_state_dict(ours_vae.autoencoder.state_dict())
    ours_voc = Vocoder(voc_cfg).to(device).eval()
    ref_voc = SpeechT5HifiGan(voc_cfg.to_transformers()).to(device).eval()
    ref_voc.load_state_dict(ours_voc.hifigan.state_dict())

    frames = int(round(seconds * voc_cfg.sampling_rate / voc_cfg.hop_length))
    frames -= frames % vae_cfg.downsample_factor
    z = torch.randn(1, vae_cfg.latent_channels, frames // vae_cfg.downsample_factor,
                    vae_cfg.n_mels // vae_cfg.downsample_factor, device=device)  # [B, 8, S/4, F/4]
    mel = torch.randn(1, voc_cfg.model_in_dim, frames, device=device)  # [B, F, S]
    samples = frames * voc_cfg.hop_length
    # same weights, same outputs (AudioLDM's vocoder makes 32 extra samples, which both pipelines crop)
    assert (ours_vae.decode(z) - ref_vae.decode(z).sample[:, 0].transpose(1, 2)).abs().max() < 1e-4
    assert (ours_voc(mel) - ref_voc(mel.transpose(1, 2))[:, :samples]).abs().max() < 1e-4

    audio_s = samples / voc_cfg.sampling_rate
    rows = [
        ("VAE dec", ours_vae.num_parameters(),
         race(lambda: ref_vae.decode(z).sample, lambda: ours_vae.decode(z), repeats, device)),
        ("vocoder", ours_voc.num_parameters(),
         race(lambda: ref_voc(mel.transpose(1, 2)), lambda: ours_voc(mel), repeats, device)),
    ]
    for part, params, ((w_ref, c_ref), (w_ours, c_ours)) in rows:
        print(f"{name:<20}{part:<9}{params / 1e6:>8.2f}M{w_ref * 1e3:>11.1f}{w_ours * 1e3:>10.1f}{w_ours / w_ref:>7.3f}"
              f"{c_ref * 1e3:>11.1f}{c_ours * 1e3:>10.1f}{c_ours / c_ref:>7.3f}{w_ours / audio_s:>9.4f}", flush=True)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.12, help="audio length decoded (default 5.12 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, CPU threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.seconds} s of audio, batch 1, best of {args.repeats}")
    print(f"{'':<37}{'--------- wall ---------':>28}{'---------- CPU ----------':>28}")
    print(f"{'size':<20}{'part':<9}{'params':>9}{'ref ms':>11}{'ours ms':>10}{'ratio':>7}{'ref ms':>11}{'ours ms':>10}"
          f"{'ratio':>7}{'RTF ours':>9}")
    for name in args.sizes.split(","):
        bench_size(name, args.seconds, args.repeats, device)


if __name__ == "__main__":
    main()
