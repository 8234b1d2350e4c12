"""Token-backend speed: decoding tokens/s of our LM with and without its KV cache, beside transformers'
MusicGen decoder (MusicgenForCausalLM) and LlamaForCausalLM of the same size, and the time to make 5 s of
audio with the token pipeline at its default settings.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/token_speed.py [--threads 1] [--new-tokens 256]
        [--model DIR] [--prompt "a jazzy piano trio at 120 bpm"]

1. decoding: d256 x 4 layers x 4 heads, MLP 1024, vocabulary 1024, a 16-token prefix (ours: 12 conditioning
   tokens + [SEM], + 3 tokens), `--new-tokens` sampled tokens (top-k 250), batch 1 and 8:
   - ours, KV cache: `SemanticLM.generate` (preallocated cache, one position per step)
   - ours, no cache: the same model re-running the whole sequence for every token
   - MusicgenForCausalLM.generate (one codebook, so one token per step like ours; no text cross-attention)
   - LlamaForCausalLM.generate (SDPA, DynamicCache), the alternative the brief names
2. 5 s of audio: `TokenPipeline` with `--model` (default models/default-tokens) or, when that folder is
   missing, random parts of its sizes (train/configs/*-lm.json; 12 x 1024 conditioning RVQ; 512 k-means
   clusters; the default codec, the 8 x 1024 mel RVQ over models/mel-codec's VAE, decoded by `--vocoder`;
   the shipped CLAP when models/clap exists), guidance 3 (batched CFG), one output; split into its stages,
   for both fine-stage patterns (delay, parallel; a model folder only has its own).
Every case reports wall time and this process's CPU time: on a machine shared with other jobs the wall
time includes waiting for a core; CPU time is what the work costs. Median of `--repeats` after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a jazzy piano trio"
D_MODEL, LAYERS, HEADS, FFN, VOCAB, PREFIX = 256, 4, 4, 1024, 1024, 16


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, cpu) seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


# --------------------------------------------------------------------------------------------- decoding


def ours(new: int, window: int):
    from soundsmith.gen.token_lm import TokenLMConfig, build_lm

    torch.manual_seed(0)
    cfg = TokenLMConfig(stage="semantic", d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS, d_ff=FFN, dropout=0.0,
                        semantic_vocab=VOCAB, window=window)
    return build_lm(cfg).eval()


def decode_cases(batch: int, new: int) -> dict[str, Callable[[], object]]:
    from soundsmith.gen.token_lm import SamplingParams, sample_logits
    from transformers import LlamaConfig, LlamaForCausalLM, MusicgenDecoderConfig, MusicgenForCausalLM

    lm = ours(new, 3 + new + 1)
    sampling = SamplingParams(top_k=250)
    cond = torch.randint(0, 1024, (batch, 12))
    prompt = torch.randint(0, VOCAB, (batch, 3))

    def ours_cached() -> object:
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        return lm.generate(cond, 3 + new, prompt=prompt, sampling=sampling, generators=gens)

    @torch.inference_mode()
    def ours_uncached() -> object:
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        tokens = prompt
        for _ in range(new):  # the whole sequence again for every token
            x = lm.embed(cond, tokens)
            h = lm.run(x)[:, -1]
            tokens = torch.cat([tokens, sample_logits(lm.semantic.level_logits(h, 0), sampling, gens)[:, None]], 1)
        return tokens

    torch.manual_seed(0)
    musicgen = MusicgenForCausalLM(MusicgenDecoderConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=FFN,
        num_codebooks=1, pad_token_id=VOCAB, bos_token_id=VOCAB, max_position_embeddings=2048, dropout=0.0)).eval()
    for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):  # what its generate() builds masks from
        setattr(musicgen.generation_config, key, VOCAB)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=2048,
        attn_implementation="sdpa")).eval()
    ids = torch.randint(0, VOCAB, (batch, PREFIX))
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=250, num_return_sequences=1)

    def musicgen_generate() -> object:
        return musicgen.generate(input_ids=ids, **kwargs)

    def llama_generate() -> object:
        return llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)

    return {"ours, KV cache": ours_cached, "ours, no cache": ours_uncached,
            "transformers MusicgenForCausalLM.generate": musicgen_generate,
            "transformers LlamaForCausalLM.generate": llama_generate}


# ------------------------------------------------------------------------------------------- pipeline


def default_pipeline(fine_pattern: str = "delay", model: Path | None = None, vocoder: str | None = None):
    """`model` (default models/default-tokens), or random parts of the shipped sizes (CLAP: models/clap when
    present); `vocoder` replaces the codec's vocoder (a mel RVQ codec only)."""
    import dataclasses

    from soundsmith.codecs.mel_codec import MelLatentCodec
    from soundsmith.codecs.mel_rvq import MelRVQCodec
    from soundsmith.core.weights import weights_fingerprint
    from soundsmith.gen.clap import SoundsmithClap, load_clap
    from soundsmith.gen.cond_tokens import ConditioningQuantizer
    from soundsmith.gen.conditioners import ClapConditioner
    from soundsmith.gen.semantic import ClapFrameFeatures, SemanticTokenizer
    from soundsmith.gen.token_lm import TokenLMConfig, build_lm
    from soundsmith.pipelines.tokens import TokenPipeline

    shipped = model or ROOT / "models" / "default-tokens"
    if (shipped / "config.json").is_file():
        pipe = TokenPipeline.from_pretrained(shipped)
        if vocoder is not None:
            from soundsmith.codecs.vocoders import build_vocoder

            codec = pipe.codec
            pipe.codec = codec.with_vocoder(build_vocoder(vocoder, mel=codec.mel_codec.vae.config.mel,
                                                          base_dir=codec._mel_codec_folder))
        return pipe, f"{shipped}"
    torch.manual_seed(0)
    clap_dir = ROOT / "models" / "clap"
    clap = load_clap(clap_dir) if (clap_dir / "config.json").is_file() else SoundsmithClap()
    rvq = ConditioningQuantizer(dataclasses.replace(ConditioningQuantizer().config,
                                                    clap_fingerprint=weights_fingerprint(clap)))
    rvq.init_from_data_(torch.nn.functional.normalize(torch.randn(2048, 512), dim=-1))
    kmeans = SemanticTokenizer(ClapFrameFeatures(clap), n_clusters=512)
    kmeans.centroids = torch.randn(512, kmeans.config.dim)
    mel_codec = MelLatentCodec.from_pretrained(ROOT / "models" / "mel-codec", vocoder=vocoder or "griffin-lim")
    codec = MelRVQCodec(mel_codec).eval()
    with torch.no_grad():
        codec.quantizer.initialize_(torch.randn(4096, codec.config.dim))
    r = round(codec.frame_rate / kmeans.frame_rate)
    lms = []
    for stage in ("semantic", "coarse", "fine"):
        raw = json.loads((ROOT / "train" / "configs" / f"{stage}-lm.json").read_text())
        model = {**raw.get("model", {}), "dropout": 0.0}
        if stage == "fine":
            model["fine_pattern"] = fine_pattern
        rate = kmeans.frame_rate if stage == "semantic" else codec.frame_rate
        m = r if stage == "coarse" else 1
        window = int(round(raw.get("window_s", 5.0) * rate)) // m * m
        lms.append(build_lm(TokenLMConfig(stage=stage, cond_levels=rvq.n_levels, cond_codebook_size=rvq.codebook_size,
                                          semantic_vocab=512, acoustic_codebook_size=codec.codebook_size,
                                          frames_per_semantic=r, window=window, frame_rate=rate, **model)))
    pipe = TokenPipeline(ClapConditioner(clap), rvq, kmeans, *lms, codec)
    what = "random parts of the default sizes" + (" + shipped CLAP" if (clap_dir / "config.json").is_file() else "")
    return pipe, what


def pipeline_case(repeats: int, seconds: float, fine_pattern: str, model: Path | None = None,
                  vocoder: str | None = None, prompt: str = PROMPT) -> dict[str, object]:
    pipe, what = default_pipeline(fine_pattern, model, vocoder)
    pipe.progress_bar = False
    stages: dict[str, float] = {}

    def wrap(name: str, fn: Callable) -> Callable:
        def inner(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            stages[f"{name} wall"] = stages.get(f"{name} wall", 0.0) + time.perf_counter() - w
            stages[f"{name} cpu"] = stages.get(f"{name} cpu", 0.0) + time.process_time() - c
            return out
        return inner

    for name in ("semantic_lm", "coarse_lm", "fine_lm"):
        part = getattr(pipe, name)
        if part is None:  # a model without a fine LM decodes its coarse levels
            continue
        part.generate = wrap(name.replace("_lm", ""), part.generate)
    pipe.codec.decode = wrap("decode", pipe.codec.decode)
    pipe.conditioner.embed_text = wrap("text", pipe.conditioner.embed_text)
    pipe.conditioner.score = wrap("clap score", pipe.conditioner.score)
    run = lambda: pipe(prompt, duration_s=seconds, seed=0, watermark=False)  # noqa: E731
    run()
    stages.clear()
    wall, cpu = timed(run, repeats)
    per_run = {k: v / (repeats + 1) for k, v in stages.items()}  # timed() runs one more warm-up
    sizes = {n: getattr(pipe, n).num_parameters() for n in ("semantic_lm", "coarse_lm", "fine_lm")
             if getattr(pipe, n) is not None}
    return {"what": what, "fine_pattern": fine_pattern, "wall": wall, "cpu": cpu, "stages": per_run, "sizes": sizes}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per decoding case")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio length of the pipeline case")
    parser.add_argument("--skip-decoding", action="store_true")
    parser.add_argument("--prompt", default=PROMPT, help=f"prompt of the pipeline case (default {PROMPT!r}; one "
                        "that names a tempo, e.g. 'a jazzy piano trio at 120 bpm', times the beat grid too)")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--model", type=Path, default=None, help="token model folder for the pipeline case "
                        "(default: models/default-tokens, else random parts of its sizes)")
    parser.add_argument("--vocoder", default=None, help="replace the codec's vocoder by this registry name")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    results: dict[str, object] = {"threads": args.threads, "new_tokens": args.new_tokens}
    if not args.skip_decoding:
        print(f"decoding: d{D_MODEL} x {LAYERS} layers, vocabulary {VOCAB}, {args.new_tokens} new tokens, top-k 250, "
              f"{args.threads} thread(s); tokens/s = batch x new tokens / time")
        print(f"{'case':44s} {'batch':>5s} {'wall s':>8s} {'cpu s':>8s} {'tok/s wall':>11s} {'tok/s cpu':>10s}")
        rows = []
        for batch in (1, 8):
            for name, fn in decode_cases(batch, args.new_tokens).items():
                repeats = 1 if "no cache" in name else args.repeats
                wall, cpu = timed(fn, repeats)
                tokens = batch * args.new_tokens
                rows.append({"case": name, "batch": batch, "wall_s": wall, "cpu_s": cpu,
                             "tokens_per_s_wall": tokens / wall, "tokens_per_s_cpu": tokens / cpu})
                print(f"{name:44s} {batch:5d} {wall:8.2f} {cpu:8.2f} {tokens / wall:11.0f} {tokens / cpu:10.0f}",
                      flush=True)
        results["decoding"] = rows
    if not args.skip_pipeline:
        print(f"\ntime to make {args.seconds:g} s of audio of {args.prompt!r} (guidance 3, one output, "
              f"{args.threads} thread(s)); "
              "target <= 2 s (issue 17)")
        rows = []
        model = args.model or ROOT / "models" / "default-tokens"
        patterns = ("delay",) if (model / "config.json").is_file() else ("delay", "parallel")
        for pattern in patterns:
            r = pipeline_case(args.repeats, args.seconds, pattern, args.model, args.vocoder, args.prompt)
            rows.append(r)
            stages = ", ".join(f"{k.split(' ')[0]} {r['stages'].get(k, 0.0):.2f}" for k in r["stages"] if k.endswith("cpu"))
            fine = f"fine stage '{pattern}'" if "fine_lm" in r["sizes"] else "no fine LM (coarse levels decoded)"
            print(f"{r['what']}, {fine}: wall {r['wall']:.2f} s, cpu {r['cpu']:.2f} s "
                  f"(cpu by stage: {stages}); LM parameters {r['sizes']}", flush=True)
        results["pipeline"] = rows
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
