"""The token LMs (gen/token_lm.py): KV-cached generation agrees with the teacher-forced forward pass for all
three stages (both fine patterns), prompts continue exactly, sliding windows, sampling filters, per-output
generators, classifier-free guidance, save/load, config errors."""

import pytest
import torch
from soundsmith.gen.token_lm import (
    IGNORE,
    SamplingParams,
    TokenLM,
    TokenLMConfig,
    build_lm,
    check_sampling,
    plan_windows,
    sample_logits,
)

GREEDY = SamplingParams(top_k=1)
B = 2


def tiny(stage: str, **changes) -> TokenLM:
    torch.manual_seed(0)
    cfg = TokenLMConfig(stage=stage, d_model=32, n_layers=2, n_heads=2, d_ff=64, dropout=0.0, cond_levels=3,
                        cond_codebook_size=16, cond_embed_dim=8, semantic_vocab=20, n_coarse=2, n_fine=3,
                        acoustic_codebook_size=16, acoustic_embed_dim=8, window=8, **changes)
    lm = build_lm(cfg).eval()
    with torch.no_grad():  # decisive logits: greedy choices must not hinge on 1e-7 differences between
        for module in lm.modules():  # a prefill and a cached step
            if hasattr(module, "table"):
                module.table.weight.mul_(30)
    return lm


def cond(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 16, (B, 3), generator=torch.Generator().manual_seed(seed))


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------------- cache == teacher forcing


def test_semantic_generation_matches_forward():
    lm, c = tiny("semantic"), cond()
    tokens = lm.generate(c, 8, sampling=GREEDY)
    assert tokens.shape == (B, 8) and tokens.dtype == torch.long
    out = lm(c, tokens)
    assert out.logits.shape == (B, 8, 20)
    assert torch.equal(out.logits.argmax(-1), tokens)  # each greedy token is the forward pass's argmax
    assert torch.equal(lm.generate(c, 8, prompt=tokens[:, :3], sampling=GREEDY), tokens)


def test_coarse_generation_matches_forward():
    lm, c = tiny("coarse"), cond()
    semantic = torch.randint(0, 20, (B, 4))
    codes = lm.generate(c, semantic, 8, sampling=GREEDY)
    assert codes.shape == (B, 2, 8)
    out = lm(c, semantic, codes)
    assert out.logits.shape == (B, 8, 2, 16)
    assert torch.equal(out.logits.argmax(-1), codes.transpose(1, 2))
    assert torch.equal(lm.generate(c, semantic, 8, prompt=codes[:, :, :4], sampling=GREEDY), codes)
    with pytest.raises(ValueError, match="whole number of semantic tokens"):
        lm.generate(c, semantic, 8, prompt=codes[:, :, :3])


def test_aligned_coarse_generation_matches_forward():
    lm, c = tiny("coarse", aligned_semantic=True), cond()
    with torch.no_grad():
        lm.aligned.weight.mul_(30)
    semantic = torch.randint(0, 20, (B, 4))
    for guidance in (1.0, 3.0):
        codes = lm.generate(c, semantic, 8, sampling=GREEDY, guidance_scale=guidance)
        if guidance == 1.0:
            assert torch.equal(lm(c, semantic, codes).logits.argmax(-1), codes.transpose(1, 2))
        assert torch.equal(lm.generate(c, semantic, 8, prompt=codes[:, :, :4], sampling=GREEDY,
                                       guidance_scale=guidance), codes)
    # sliding windows read the semantic tokens of their own frames
    long = lm.generate(c, torch.randint(0, 20, (B, 11)), 21, generators=gens(3, 4))
    assert long.shape == (B, 2, 21)


@pytest.mark.parametrize("aligned", [False, True])
def test_delay_coarse_generation_matches_forward(aligned):
    lm, c = tiny("coarse", coarse_pattern="delay", aligned_semantic=aligned), cond()
    if aligned:
        with torch.no_grad():
            lm.aligned.weight.mul_(30)
    semantic = torch.randint(0, 20, (B, 4))
    for guidance in (1.0, 3.0):
        steps: list[int] = []
        codes = lm.generate(c, semantic, 8, sampling=GREEDY, guidance_scale=guidance,
                            on_step=lambda s=steps: s.append(1))
        assert codes.shape == (B, 2, 8) and len(steps) == lm.steps(8) == 8 + 1  # one position per frame + delay
        if guidance == 1.0:
            out = lm(c, semantic, codes)
            assert out.logits.shape == (B, 9, 2, 16)
            keep = out.targets != IGNORE
            assert int(keep.sum()) == B * 8 * 2  # every code of every frame is a target exactly once
            assert torch.equal(out.logits.argmax(-1)[keep], out.targets[keep])
        assert torch.equal(lm.generate(c, semantic, 8, prompt=codes[:, :, :4], sampling=GREEDY,
                                       guidance_scale=guidance), codes)
    long = lm.generate(c, torch.randint(0, 20, (B, 11)), 21, generators=gens(3, 4))
    assert long.shape == (B, 2, 21)


def test_delay_coarse_is_causal_in_its_slots():
    """Level 2 of frame t sees level 1 of frame t (one position earlier); level 1 of frame t does not see
    level 2 of frame t - 1, which is sampled at the same position."""
    lm, c = tiny("coarse", coarse_pattern="delay"), cond()
    semantic, codes = torch.randint(0, 20, (B, 4)), torch.randint(0, 16, (B, 2, 8))
    other = codes.clone()
    other[:, 0, 3] = (other[:, 0, 3] + 1) % 16  # level 1 of frame 3
    a, b = lm(c, semantic, codes).logits, lm(c, semantic, other).logits  # [B, P, Kc, V]
    diff = (a - b).abs().amax(-1)  # [B, P, Kc]
    assert (diff[:, :4] < 1e-6).all()  # positions up to 3 (where frame 3's level 1 is sampled) cannot see it
    assert (diff[:, 4, 1] > 1e-4).all()  # level 2 of frame 3, sampled at position 4, reads it
    other = codes.clone()
    other[:, 1, 3] = (other[:, 1, 3] + 1) % 16  # level 2 of frame 3, sampled at position 4
    diff = (lm(c, semantic, other).logits - a).abs().amax(-1)
    assert (diff[:, :5] < 1e-6).all() and (diff[:, 5] > 1e-4).all()


def test_aligned_semantic_reaches_its_own_frame():
    """Changing semantic token j changes the predictions of frames 2j and 2j+1 (frames_per_semantic 2) through
    the aligned path even where the prefix path is cut (its embedding zeroed)."""
    lm, c = tiny("coarse", aligned_semantic=True), cond()
    with torch.no_grad():
        lm.semantic.table.weight.zero_()
    semantic, codes = torch.randint(0, 20, (B, 4)), torch.randint(0, 16, (B, 2, 8))
    other = semantic.clone()
    other[:, 2] = (other[:, 2] + 1) % 20
    diff = (lm(c, semantic, codes).logits - lm(c, other, codes).logits).abs().amax(dim=(-1, -2))  # [B, 8 frames]
    assert (diff[:, :4] < 1e-6).all()  # causal: earlier frames cannot see it
    assert (diff[:, 4:6] > 1e-4).all()  # frames 4 and 5 read token 2
    plain = tiny("coarse")
    assert plain.aligned is None and "aligned" not in "".join(plain.state_dict())


def test_grow_lm_keeps_what_it_learned():
    from soundsmith.gen.token_lm import grow_lm

    lm, c = tiny("coarse"), cond()
    semantic, codes = torch.randint(0, 20, (B, 4)), torch.randint(0, 16, (B, 2, 8))
    grown = grow_lm(lm, aligned_semantic=True)
    assert grown.config.aligned_semantic and not lm.config.aligned_semantic
    assert torch.equal(grown(c, semantic, codes).logits, lm(c, semantic, codes).logits)  # new weights at zero
    delayed = grow_lm(grown, coarse_pattern="delay")  # the same weights, a new layout
    assert delayed.config.coarse_pattern == "delay" and delayed.steps(8) == 9
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in delayed.state_dict().items())
    # a level appended to the delay pattern: its rows start at zero, so the old levels compute what they did
    three = grow_lm(delayed, n_coarse=3)
    more = torch.cat([codes, torch.randint(0, 16, (B, 1, 8))], dim=1)
    assert torch.allclose(three(c, semantic, more).logits[:, :9, :2], delayed(c, semantic, codes).logits, atol=1e-6)
    with pytest.raises(ValueError, match="cannot grow n_coarse from 2 down to 1"):
        grow_lm(lm, n_coarse=1)
    with pytest.raises(ValueError, match="cannot grow a trained LM by 'd_model'"):
        grow_lm(lm, d_model=64)


@pytest.mark.parametrize("pattern", ["delay", "parallel"])
def test_fine_generation_matches_forward(pattern):
    lm = tiny("fine", fine_pattern=pattern)
    coarse = torch.randint(0, 16, (B, 2, 8))
    fine = lm.generate(coarse, sampling=GREEDY)
    assert fine.shape == (B, 3, 8)
    out = lm(coarse, fine)
    delay = 2 if pattern == "delay" else 0
    assert out.logits.shape == (B, 8 + delay, 3, 16)
    keep = out.targets != IGNORE
    assert int(keep.sum()) == B * 8 * 3  # every code of every frame is a target exactly once
    assert torch.equal(out.logits.argmax(-1)[keep], out.targets[keep])
    assert torch.equal(lm.generate(coarse, prompt=fine[:, :, :3], sampling=GREEDY), fine)
    assert lm.steps(8) == 8 + delay


def test_delay_pattern_layout():
    lm = tiny("fine")
    fine = torch.arange(2 * 3 * 4).view(2, 3, 4) % 16  # [B, Kf, S]
    slots = lm.delayed(fine, 6)  # [B, P, Kf]
    none = lm.acoustic.none
    assert slots[0, :, 0].tolist() == fine[0, 0].tolist() + [none, none]
    assert slots[0, :, 2].tolist() == [none, none] + fine[0, 2].tolist()


def test_cache_equals_full_forward():
    lm = tiny("semantic")
    x = torch.randn(B, 10, 32)
    full = lm.run(x)
    cache = lm.new_cache(B, 10)
    parts = [lm.run(x[:, :4], cache, 0), lm.run(x[:, 4:7], cache, 4)] + [lm.run(x[:, i:i + 1], cache, i)
                                                                         for i in range(7, 10)]
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="KV cache of 10 positions is full"):
        lm.run(x[:, :1], cache, 10)


# ----------------------------------------------------------------------------------- windows


def test_plan_windows():
    assert plan_windows(8, 0, 8, 0.5) == [(0, 8)]
    assert plan_windows(20, 0, 8, 0.5) == [(0, 8), (4, 4), (4, 4), (4, 4)]
    assert plan_windows(10, 3, 8, 0.5) == [(3, 5), (4, 2)]  # a 3-token prompt: kept whole at first
    assert plan_windows(20, 0, 8, 0.5, multiple=3) == [(0, 8), (3, 5), (3, 5), (3, 2)]
    assert plan_windows(5, 5, 8, 0.5) == []
    with pytest.raises(ValueError, match="context_fraction"):
        plan_windows(5, 0, 8, 1.0)


def test_long_generation_slides_and_starts_like_one_window():
    lm, c = tiny("semantic"), cond()
    sampling = SamplingParams(temperature=1.0, top_k=5)
    long = lm.generate(c, 21, sampling=sampling, generators=gens(1, 2))
    short = lm.generate(c, 8, sampling=sampling, generators=gens(1, 2))
    assert long.shape == (B, 21) and torch.equal(long[:, :8], short)
    coarse = tiny("coarse").generate(c, torch.randint(0, 20, (B, 11)), 21, generators=gens(3, 4))
    assert coarse.shape == (B, 2, 21)
    fine = tiny("fine").generate(torch.randint(0, 16, (B, 2, 21)), generators=gens(5, 6))
    assert fine.shape == (B, 3, 21)
    steps = []
    tiny("fine").generate(torch.randint(0, 16, (B, 2, 21)), on_step=lambda: steps.append(1))
    lm_fine = tiny("fine")
    assert len(steps) == sum(lm_fine.steps(new) for _, new in plan_windows(21, 0, 8, 0.25))


def test_window_limit_is_enforced():
    lm = tiny("semantic")
    with pytest.raises(ValueError, match="exceeds this semantic LM's window"):
        lm(cond(), torch.randint(0, 20, (B, 10)))


# ---------------------------------------------------------------------------------- sampling


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 0.0, 0.5]])
    assert sample_logits(logits, SamplingParams(top_k=1)).tolist() == [1, 0]
    assert sample_logits(logits, SamplingParams(top_p=0.01)).tolist() == [1, 0]  # nucleus of one token
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits, SamplingParams(top_k=2), [g, g]) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3} and set(draws[:, 1].tolist()) == {0, 1}  # only the top 2
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits, SamplingParams(top_p=0.9), [g, g]) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3, 2}  # p(1, 3) = 0.91 >= 0.9 after 1 alone (0.64) is not
    cold = torch.stack([sample_logits(logits, SamplingParams(temperature=0.05), gens(i, i)) for i in range(50)])
    assert (cold == torch.tensor([1, 0])).all()


@pytest.mark.parametrize("args, message", [
    ((0.0, None, 1.0), "temperature must be a finite number > 0"),
    ((float("nan"), None, 1.0), "temperature must be a finite number > 0"),
    ((1.0, 0, 1.0), "top_k must be an integer >= 1"),
    ((1.0, 2.5, 1.0), "top_k must be an integer >= 1"),
    ((1.0, None, 0.0), r"top_p must be a number in \(0, 1\]"),
    ((1.0, None, 1.5), r"top_p must be a number in \(0, 1\]"),
])
def test_sampling_errors(args, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(*args)
    with pytest.raises(ValueError, match=message):
        SamplingParams(*args)


def test_one_generator_per_output():
    lm, c, hot = tiny("semantic"), cond(), SamplingParams(temperature=20.0)  # near-uniform draws
    both = lm.generate(c, 8, sampling=hot, generators=gens(7, 8))
    again = lm.generate(c, 8, sampling=hot, generators=gens(7, 8))
    alone = lm.generate(c[1:], 8, sampling=hot, generators=gens(8))
    assert torch.equal(both, again) and torch.equal(both[1:], alone)  # output 1 does not depend on output 0
    assert not torch.equal(lm.generate(c, 8, sampling=hot, generators=gens(9, 10)), both)
    with pytest.raises(ValueError, match="one generator per output"):
        lm.generate(c, 8, generators=gens(1))


def test_guidance_batch():
    lm, c = tiny("semantic"), cond()
    null = lm.null_cond(B)
    # scale 0 keeps only the unconditional half: the same tokens as generating from the null prefix
    assert torch.equal(lm.generate(c, 8, guidance_scale=0.0, sampling=GREEDY), lm.generate(null, 8, sampling=GREEDY))
    # a negative prompt's tokens replace the null prefix
    neg = cond(5)
    assert torch.equal(lm.generate(c, 8, uncond=neg, guidance_scale=0.0, sampling=GREEDY),
                       lm.generate(neg, 8, sampling=GREEDY))
    guided = lm.generate(c, 8, guidance_scale=3.0, sampling=GREEDY)
    x = lm.embed(torch.cat([null, c]), guided[:, :-1].repeat(2, 1))
    logits = lm.semantic.logits(lm.run(x)[:, 3:, None])[:, :, 0]  # [2B, 8, V]
    u, k = logits.chunk(2)
    assert torch.equal((u + 3.0 * (k - u)).argmax(-1), guided)


def test_condition_reaches_every_position():
    lm, tokens = tiny("semantic"), torch.randint(0, 20, (B, 8))
    a, b = lm(cond(0), tokens).logits, lm(cond(1), tokens).logits  # [B, 8, V]
    assert ((a - b).abs().amax(-1) > 1e-4).all()  # the prefix changes the prediction at every position
    assert ((a - lm(lm.null_cond(B), tokens).logits).abs().amax(-1) > 1e-4).all()


# -------------------------------------------------------------------------------- save / load


def test_save_and_load(tmp_path):
    lm = tiny("coarse", trained_with={"codec": "abc"})
    lm.save_pretrained(tmp_path / "fp32")
    loaded = TokenLM.from_pretrained(tmp_path / "fp32")
    assert type(loaded).__name__ == "CoarseLM" and loaded.config == lm.config
    c, semantic = cond(), torch.randint(0, 20, (B, 4))
    assert torch.equal(loaded.generate(c, semantic, 8, generators=gens(1, 2)),
                       lm.generate(c, semantic, 8, generators=gens(1, 2)))
    lm.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "fp16" / "model.safetensors")).values())
    half = TokenLM.from_pretrained(tmp_path / "fp16")
    assert next(half.parameters()).dtype == torch.float32
    from soundsmith.gen.token_lm import FineLM, SemanticLM

    with pytest.raises(ValueError, match="holds a CoarseLM, not a SemanticLM"):
        SemanticLM.from_pretrained(tmp_path / "fp32")
    with pytest.raises(ValueError, match="missing key"):
        (tmp_path / "fp32" / "config.json").write_text((tmp_path / "fp32" / "config.json").read_text()
                                                       .replace('"n_layers": 2', '"n_layers": 3'))
        TokenLM.from_pretrained(tmp_path / "fp32")
    assert FineLM.stage == "fine"


@pytest.mark.parametrize("changes, message", [
    ({"stage": "medium"}, "stage must be one of semantic, coarse, fine"),
    ({"n_heads": 3}, "must split into n_heads"),
    ({"fine_pattern": "zigzag"}, "fine_pattern must be one of delay, parallel"),
    ({"coarse_pattern": "delay-ish"}, "coarse_pattern must be one of flat, delay"),
    ({"stage": "coarse", "window": 7}, "must be a multiple of frames_per_semantic"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"n_layers": 0}, "n_layers must be >= 1"),
])
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        TokenLMConfig(**changes)
    with pytest.raises(ValueError, match="unknown field 'layers'"):
        TokenLMConfig.from_dict({"layers": 3})
