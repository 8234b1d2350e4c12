"""Speed of the RVQ codec: encode + decode beside transformers' `EncodecModel` on the same weights,
and the real-time factor. Targets (issue 6): time ratio ours / transformers <= 1.0; >= 50x real time.

    .venv/bin/python benchmarks/bench_codec.py [--model models/default-codec] [--seconds 4] [--repeats 7]
        [--threads 1] [--levels 8] [--data data/corpus --num-clips 60]

Without `--model` the default architecture (16 kHz, hop 320, 8 x 1024) runs with random weights,
which costs the same. Both models encode one clip of `--seconds` of noise-like audio to codes and
decode them, alternating run by run in one process (medians; one warm-up each). The printed max
difference checks that both produce the same audio. With `--data`, the reconstruction report of
`soundsmith eval codec` (mel L1, MR-STFT, SI-SDR per domain) follows at K levels and at 3 (the
token backend's coarse split).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="codec folder (default: the default architecture, random weights)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=7)
    # 1 by default: on a CPU shared with other jobs, OpenMP's spinning threads made 2 threads 10-20x
    # slower than 1 (measured on this machine); pass --threads 2 on an idle one
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--levels", type=int, default=None, help="RVQ levels to encode (default: all)")
    p.add_argument("--data", default=None, help="corpus folder: also print the reconstruction report")
    p.add_argument("--num-clips", type=int, default=60, help="clips for the report (default 60)")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from soundsmith.codecs.neural_codec import NeuralCodec
    from transformers import EncodecModel

    # 1. the two models, same weights
    if args.model:
        codec = NeuralCodec.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        codec = NeuralCodec().eval()
        with torch.no_grad():
            for layer in codec.quantizer.layers:
                layer.codebook.embed.normal_(0, 0.1)
                layer.codebook.inited.fill_(1.0)
    reference = EncodecModel(codec.config.to_transformers()).eval()
    reference.load_state_dict(codec.state_dict(), strict=True)
    n_levels = args.levels or codec.max_levels
    bandwidth = codec.config.bandwidths()[n_levels - 1]

    # 2. one clip; alternate the two codecs run by run so load changes hit both alike
    g = torch.Generator().manual_seed(0)
    wave = (torch.randn(1, codec.channels, int(args.seconds * codec.sample_rate), generator=g) * 0.1).clamp(-1, 1)

    def ours() -> torch.Tensor:
        return codec.decode(codec.encode(wave, n_levels=n_levels))

    @torch.no_grad()
    def theirs() -> torch.Tensor:
        out = reference.encode(wave, bandwidth=bandwidth)
        return reference.decode(out.audio_codes, out.audio_scales)[0]

    diff = float((ours() - theirs()).abs().max())  # also the warm-up
    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("transformers", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    enc = statistics.median(_timed(lambda: codec.encode(wave, n_levels=n_levels)) for _ in range(args.repeats))

    sizes = codec.num_parameters()
    fp16_mb = sum(v.numel() * 2 for v in codec.state_dict().values()) / 1e6
    print(f"codec: {codec.sample_rate} Hz, hop {codec.hop_length}, {n_levels}/{codec.max_levels} levels x "
          f"{codec.codebook_size}; {sizes['encoder'] + sizes['decoder']:,} weights + {sizes['codebooks']:,} codebook "
          f"entries; {fp16_mb:.2f} MB fp16; torch threads {torch.get_num_threads()}")
    print(f"encode+decode of {args.seconds:g} s (median of {args.repeats}): ours {med['ours'] * 1e3:.1f} ms, "
          f"transformers {med['transformers'] * 1e3:.1f} ms, ratio {med['ours'] / med['transformers']:.3f} "
          f"(target <= 1.0); max |difference| {diff:.2e}")
    print(f"real-time factor: {args.seconds / med['ours']:.1f}x (target >= 50x); encode alone "
          f"{args.seconds / enc:.1f}x, decode alone {args.seconds / max(med['ours'] - enc, 1e-9):.1f}x")
    print(json.dumps({"seconds": args.seconds, "ours_s": med["ours"], "transformers_s": med["transformers"],
                      "ratio": med["ours"] / med["transformers"], "rtf_x": args.seconds / med["ours"],
                      "threads": torch.get_num_threads(), "max_abs_diff": diff}))

    # 3. optional reconstruction report at K and 3 levels
    if args.data:
        from soundsmith.eval.codec_report import codec_report_dict

        for levels in dict.fromkeys((codec.max_levels, min(3, codec.max_levels))):
            view = NeuralCodec.from_pretrained(args.model, n_levels=levels) if args.model else codec
            report = codec_report_dict(args.model or "random", args.data, num_clips=args.num_clips,
                                       split=args.split, codec=view)
            print(f"\nreconstruction at {levels} levels ({levels * codec.frame_rate * codec.config.bits_per_level / 1000:g}"
                  f" kbps), {report['clips']} {args.split} clips:")
            print(f"{'domain':<10}{'clips':>6}{'mel L1':>9}{'MR-STFT':>9}{'SI-SDR dB':>11}{'RTF enc':>9}{'RTF dec':>9}")
            for name, m in report["domains"].items():
                print(f"{name:<10}{m['clips']:>6}{m['mel_l1']:>9.3f}{m['mrstft']:>9.3f}{m['si_sdr_db']:>11.2f}"
                      f"{m['rtf_encode']:>9.4f}{m['rtf_decode']:>9.4f}")
    return 0


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
