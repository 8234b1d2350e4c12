"""Beat-grid conditioning of the coarse LM (gen/tempo.py beat_features, TokenLMConfig.beat_dim): the features,
the grown LM (identical until trained, cached generation reads the grid as the teacher-forced pass does), the
trainer's crops (each clip's own grid from its crop start) and the token pipeline (a grid at the read tempo)."""

import numpy as np
import pytest
import torch
from soundsmith.gen.tempo import BEAT_DIM, beat_features, beat_phase, grid_beats

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_beat_phase_and_features():
    phase = beat_phase([0.5, 1.0, 1.5], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.25, 2.0, 2.25]))
    assert torch.allclose(phase, torch.tensor([0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5]), atol=1e-6)  # grid continued
    f = beat_features(grid_beats(120.0, 2.0), 50, 25.0)  # a beat every 12.5 frames
    assert f.shape == (50, BEAT_DIM) and torch.all(f[:, 0] == 1)
    first = f[:, 1]  # cos of the phase: highest just after each beat
    peaks = [i for i in range(1, 49) if first[i] > first[i - 1] and first[i] >= first[i + 1]]
    assert peaks == [12, 25, 37] or peaks == [12, 24, 37]
    assert torch.allclose(f[:, 1] ** 2 + f[:, 2] ** 2, torch.ones(50), atol=1e-5)
    assert beat_features(None, 7, 25.0).abs().sum() == 0 and beat_features([1.0], 7, 25.0).abs().sum() == 0
    assert grid_beats(60.0, 2.0)[:3] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="at least 2 beats"):
        beat_phase([1.0], torch.zeros(3))


@pytest.mark.parametrize("pattern", ["delay", "flat"])
def test_coarse_lm_beat_input_starts_silent_then_counts(pattern):
    from soundsmith.gen.token_lm import SamplingParams, build_lm, grow_lm
    from token_helpers import tiny_lm_config

    torch.manual_seed(0)
    lm = build_lm(tiny_lm_config("coarse", coarse_pattern=pattern, aligned_semantic=True)).eval()
    k, frames = lm.config.n_coarse, 8
    r = lm.config.frames_per_semantic
    cond, semantic = torch.randint(0, 16, (2, 3)), torch.randint(0, 8, (2, frames // r))
    coarse = torch.randint(0, 16, (2, k, frames))
    beat = torch.stack([beat_features(grid_beats(bpm, 1.0), frames, lm.config.frame_rate) for bpm in (70.0, 150.0)])
    grown = grow_lm(lm, beat_dim=BEAT_DIM).eval()
    assert torch.equal(grown(cond, semantic, coarse, beat).logits, lm(cond, semantic, coarse).logits)
    with torch.no_grad():
        grown.beat.weight.normal_()
    assert not torch.allclose(grown(cond, semantic, coarse, beat).logits, lm(cond, semantic, coarse).logits)
    assert torch.equal(grown(cond, semantic, coarse).logits, lm(cond, semantic, coarse).logits)  # none given
    out = grown.generate(cond, semantic, frames, sampling=SamplingParams(top_k=1), beat=beat)  # [B, Kc, S]
    teacher = grown(cond, semantic, out, beat)
    if pattern == "delay":
        targets = teacher.targets
        picked = teacher.logits.argmax(-1)
        assert torch.equal(picked[targets != -100], targets[targets != -100])
    else:
        assert torch.equal(teacher.logits.argmax(-1), out.transpose(1, 2))
    with pytest.raises(ValueError, match="beat features must be shaped"):
        grown(cond, semantic, coarse, beat[..., :3])
    with pytest.raises(ValueError, match="beat_dim must be >= 0, and 0 for the fine stage"):
        tiny_lm_config("fine", beat_dim=BEAT_DIM)


def test_token_crops_carry_each_clips_beat_grid():
    from soundsmith.gen.token_lm import build_lm
    from soundsmith.train.token_cache import CondTokens, Ragged
    from soundsmith.train.train_token_lm import TokenCrops
    from token_helpers import tiny_lm_config

    lm = build_lm(tiny_lm_config("coarse", aligned_semantic=True, beat_dim=BEAT_DIM))
    r = lm.config.frames_per_semantic
    n, frames = 2, 24
    cache = {"cond": CondTokens(torch.randint(0, 16, (n, 3)), torch.randint(0, 16, (n, 2, 3))),
             "semantic": Ragged(torch.randint(0, 8, (n * frames // r,)), torch.arange(0, n * frames // r + 1, frames // r)),
             "codes": Ragged(torch.randint(0, 16, (8, n * frames)), torch.arange(0, n * frames + 1, frames))}
    beats = [[0.1, 0.5, 0.9], None]
    crops = TokenCrops("coarse", cache, lm, beats=beats)
    batch = crops.batch([0, 1], np.random.default_rng(0), cond="audio")  # fixed crops start at frame 0
    length = batch["coarse"].shape[-1]
    assert torch.allclose(batch["beat"][0], beat_features(beats[0], length, lm.config.frame_rate))
    assert batch["beat"][1].abs().sum() == 0  # a clip without beats: none
    assert crops.batch([0], np.random.default_rng(0), cond="null")["beat"].abs().sum() == 0
    dropped = TokenCrops("coarse", cache, lm, beats=beats, beat_dropout=1.0)
    assert dropped.batch([0], np.random.default_rng(1))["beat"].abs().sum() == 0
    moved = TokenCrops("coarse", cache, lm, beats=beats)  # random crops: the grid moves with the crop start
    rng = np.random.default_rng(3)
    for _ in range(5):
        b = moved.batch([0], rng)
        if b["beat"].shape[1] < frames:
            break
    assert b["beat"][0, :, 0].all()
    assert lm(**batch).loss().isfinite()
    assert "beat" not in TokenCrops("coarse", cache, build_lm(tiny_lm_config("coarse", aligned_semantic=True)),
                                    beats=beats).batch([0], np.random.default_rng(0), cond="audio")


def test_token_pipeline_follows_the_read_tempo_with_a_beat_grid(tmp_path):
    from soundsmith.gen.tempo import TempoReader, TempoReaderConfig
    from soundsmith.gen.token_lm import grow_lm
    from soundsmith.pipelines import load_pipeline
    from token_helpers import tiny_pipeline as tiny_tokens

    pipe = tiny_tokens()
    # greedy coarse codes: a random tiny LM's outputs are nearly uniform, so sampled codes hardly see a change
    run = dict(seed=0, watermark=False, loudness_lufs=None, top_k={"coarse": 1})
    plain = pipe(["a fast reel", "a reel"], **run).audios
    pipe.coarse_lm = grow_lm(pipe.coarse_lm, beat_dim=BEAT_DIM).eval()
    dim = pipe.conditioner.dim
    pipe.tempo_reader = TempoReader(torch.zeros(dim), torch.tensor(10.0), TempoReaderConfig(dim=dim))
    same = pipe(["a fast reel", "a reel"], **run)
    assert torch.allclose(same.audios, plain, atol=1e-5)  # an untrained beat input: as before
    assert same.parameters["tempo_bpm"] == [pipe.tempo_reader.config.band_bpm["fast"], None]
    with torch.no_grad():
        pipe.coarse_lm.beat.weight.normal_(std=100.0)
    out = pipe(["a fast reel", "a reel"], **run)
    assert not torch.allclose(out.audios[0], plain[0], atol=1e-4)  # the grid steers the prompt with a tempo
    assert torch.allclose(out.audios[1], plain[1], atol=1e-5)  # and not the one without
    loaded = load_pipeline(pipe.save_pretrained(tmp_path / "tokens"))
    loaded.progress_bar = False
    assert loaded.coarse_lm.config.beat_dim == BEAT_DIM
    again = loaded(["a fast reel", "a reel"], **run)
    assert torch.allclose(again.audios, out.audios, atol=1e-4)


def test_semantic_lm_beat_input_starts_silent_then_counts():
    from soundsmith.gen.token_lm import SamplingParams, build_lm, grow_lm
    from token_helpers import tiny_lm_config

    torch.manual_seed(0)
    lm = build_lm(tiny_lm_config("semantic")).eval()
    n = 20  # longer than the tiny window (12): generation slides, reading the grid at each window's offset
    cond, semantic = torch.randint(0, 16, (2, 3)), torch.randint(0, 8, (2, 10))
    beat = torch.stack([beat_features(grid_beats(bpm, 1.0), n + 1, 25.0) for bpm in (70.0, 150.0)])
    grown = grow_lm(lm, beat_dim=BEAT_DIM).eval()
    assert torch.equal(grown(cond, semantic, beat=beat).logits, lm(cond, semantic).logits)
    with torch.no_grad():
        grown.beat.weight.normal_(std=100.0)
    assert not torch.allclose(grown(cond, semantic, beat=beat).logits, lm(cond, semantic).logits)
    # cached generation reads the grid as the teacher-forced pass does (inside one window)
    out = grown.generate(cond, 10, sampling=SamplingParams(top_k=1), beat=beat)
    logits = grown(cond, torch.cat([out, out[:, :1]], 1), beat=beat).logits
    assert torch.equal(logits[:, :10].argmax(-1), out)
    long = grown.generate(cond, n, sampling=SamplingParams(top_k=1), beat=beat)
    assert long.shape == (2, n) and torch.equal(long[:, :10], out)
    assert not torch.equal(long, grown.generate(cond, n, sampling=SamplingParams(top_k=1)))
    with pytest.raises(ValueError, match="beat features must be shaped"):
        grown(cond, semantic, beat=beat[:1])


def test_semantic_crops_and_pipeline_carry_the_grid(tmp_path):
    from soundsmith.gen.tempo import TempoReader, TempoReaderConfig
    from soundsmith.gen.token_lm import build_lm, grow_lm
    from soundsmith.train.token_cache import CondTokens, Ragged
    from soundsmith.train.train_token_lm import TokenCrops
    from token_helpers import tiny_lm_config
    from token_helpers import tiny_pipeline as tiny_tokens

    lm = build_lm(tiny_lm_config("semantic", beat_dim=BEAT_DIM))
    cache = {"cond": CondTokens(torch.randint(0, 16, (2, 3)), torch.randint(0, 16, (2, 2, 3))),
             "semantic": Ragged(torch.randint(0, 8, (24,)), torch.arange(0, 25, 12))}
    beats = [[0.1, 0.5, 0.9], None]
    batch = TokenCrops("semantic", cache, lm, beats=beats).batch([0, 1], np.random.default_rng(0), cond="audio")
    assert torch.allclose(batch["beat"][0], beat_features(beats[0], batch["semantic"].shape[1], 25.0))
    assert batch["beat"][1].abs().sum() == 0 and lm(**batch).loss().isfinite()

    pipe = tiny_tokens()
    run = dict(seed=0, watermark=False, loudness_lufs=None, top_k={"semantic": 1, "coarse": 1})
    plain = pipe(["a fast reel", "a reel"], **run).audios
    pipe.semantic_lm = grow_lm(pipe.semantic_lm, beat_dim=BEAT_DIM).eval()
    with torch.no_grad():
        pipe.semantic_lm.beat.weight.normal_(std=100.0)
    dim = pipe.conditioner.dim
    pipe.tempo_reader = TempoReader(torch.zeros(dim), torch.tensor(10.0), TempoReaderConfig(dim=dim))
    out = pipe(["a fast reel", "a reel"], **run)
    assert not torch.allclose(out.audios[0], plain[0], atol=1e-4) and torch.allclose(out.audios[1], plain[1], atol=1e-5)
    pipe.config = type(pipe.config)(**{**pipe.config.to_dict(), "beat_scale": 0.0})
    assert torch.allclose(pipe(["a fast reel"], **run).audios, plain[:1], atol=1e-5)  # scale 0: the grid is off
    # beat guidance: 0 ignores the grid, a strong one follows it; a prompt with no tempo is left alone
    pipe.config = type(pipe.config)(**{**pipe.config.to_dict(), "beat_scale": 1.0, "beat_guidance": 0.0})
    assert torch.allclose(pipe(["a fast reel"], **run).audios, plain[:1], atol=1e-5)
    pipe.config = type(pipe.config)(**{**pipe.config.to_dict(), "beat_guidance": 3.0})
    out = pipe(["a fast reel", "a reel"], **run)
    guided = out.audios
    assert out.parameters["beat"] == {"scale": 1.0, "guidance": {"semantic": 3.0, "coarse": 3.0}, "guide_beat": True}
    # a call may set it for itself, checked as the config checks it
    assert torch.allclose(pipe(["a fast reel"], beat_guidance=0.0, **run).audios, plain[:1], atol=1e-5)
    assert torch.allclose(pipe(["a fast reel"], beat_guidance={"semantic": 3.0, "coarse": 3.0}, **run).audios,
                          guided[:1], atol=1e-5)
    with pytest.raises(ValueError, match=r"beat_guidance must be a finite number in \[0, 100\], got -1"):
        pipe(["a fast reel"], beat_guidance=-1, **run)
    assert not torch.allclose(guided[0], plain[0], atol=1e-4) and torch.allclose(guided[1], plain[1], atol=1e-5)


def test_beat_scale_per_stage_and_its_range():
    from soundsmith.pipelines.tokens import TokenConfig

    assert TokenConfig(beat_scale=3.0).stage_beat_scale("coarse") == 3.0
    per_stage = TokenConfig(beat_scale={"semantic": 4.0})
    assert (per_stage.stage_beat_scale("semantic"), per_stage.stage_beat_scale("coarse")) == (4.0, 1.0)
    with pytest.raises(ValueError, match=r"beat_scale\['semantic'\] must be a finite number in \[0, 20\]"):
        TokenConfig(beat_scale={"semantic": 30.0})
    with pytest.raises(ValueError, match="beat_scale: stages are 'semantic' and 'coarse'"):
        TokenConfig(beat_scale={"fine": 1.0})
    with pytest.raises(ValueError, match=r"beat_scale must be a finite number in \[0, 20\]"):
        TokenConfig(beat_scale=-1.0)


def test_train_grown_only_trains_the_new_input_alone():
    import dataclasses

    from soundsmith.train.finetune import InitModel, growth, prepare_model
    from soundsmith.train.train_token_lm import TokenLMTrainConfig
    from token_helpers import tiny_pipeline as tiny_tokens

    pipe = tiny_tokens()
    init = InitModel(folder=None, component="coarse_lm", pipe=pipe, raw_config=None, base_fingerprint="")
    cfg = TokenLMTrainConfig(init="x", train_grown_only=True)
    model = prepare_model(init, cfg, {"beat_dim": BEAT_DIM})
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["beat.weight"]
    assert all(p.requires_grad for p in prepare_model(init, TokenLMTrainConfig(init="x"), {"beat_dim": BEAT_DIM})
               .parameters())  # a plain fine-tune trains everything
    longer = dataclasses.replace(cfg, model={"n_coarse": pipe.coarse_lm.config.n_coarse + 1})
    with pytest.raises(ValueError, match="train_grown_only: growing by n_coarse adds no new parameter"):
        growth(init, longer, "config")  # refused before the run folder is made


def test_guide_beat_false_gives_the_grid_to_both_guidance_branches():
    from soundsmith.gen.token_lm import SamplingParams, build_lm, grow_lm
    from token_helpers import tiny_lm_config

    torch.manual_seed(0)
    lm = grow_lm(build_lm(tiny_lm_config("semantic")), beat_dim=BEAT_DIM).eval()
    with torch.no_grad():
        lm.beat.weight.normal_(std=100.0)
    cond = torch.randint(0, 16, (2, 3))
    beat = torch.stack([beat_features(grid_beats(bpm, 1.0), 11, 25.0) for bpm in (70.0, 150.0)])
    greedy = dict(sampling=SamplingParams(top_k=1), beat=beat)
    guided = lm.generate(cond, 10, guidance_scale=3.0, **greedy)
    both = lm.generate(cond, 10, guidance_scale=3.0, guide_beat=False, **greedy)
    assert not torch.equal(guided, both)
    # without guidance there is one branch, and the flag changes nothing
    assert torch.equal(lm.generate(cond, 10, **greedy), lm.generate(cond, 10, guide_beat=False, **greedy))


def test_guidance_branches_weights():
    from soundsmith.gen.token_lm import Branch, guidance_branches

    assert guidance_branches(1.0, True) == ([Branch(False, True)], [1.0])
    assert guidance_branches(3.0, True) == ([Branch(True, False), Branch(False, True)], [-2.0, 3.0])
    assert guidance_branches(3.0, True, beat_in_null=True)[0] == [Branch(True, True), Branch(False, True)]
    assert guidance_branches(3.0, False, beat_guidance=5.0) == ([Branch(True, False), Branch(False, False)],
                                                                [-2.0, 3.0])  # no grid: nothing to guide to
    three, weights = guidance_branches(3.0, True, beat_guidance=5.0)
    assert three == [Branch(True, False), Branch(False, False), Branch(False, True)] and weights == [-2.0, -2.0, 5.0]
    assert guidance_branches(1.0, True, beat_guidance=5.0) == ([Branch(False, False), Branch(False, True)],
                                                               [-4.0, 5.0])


@pytest.mark.parametrize("stage", ["semantic", "delay", "flat"])
def test_beat_guidance_is_compositional_guidance(stage):
    """Beat guidance b sums the branches u + g (c - u) + b (c_grid - c): b = 1 without prompt guidance is the plain
    grid-conditioned sampler, b = 0 ignores the grid, b = g is the old single-branch guidance towards prompt and
    grid, and a stronger b changes the codes."""
    from soundsmith.gen.token_lm import SamplingParams, build_lm, grow_lm
    from token_helpers import tiny_lm_config

    torch.manual_seed(0)
    frames = 8
    if stage == "semantic":
        lm = grow_lm(build_lm(tiny_lm_config("semantic")), beat_dim=BEAT_DIM).eval()
        length, rate = 10, 25.0
    else:
        lm = grow_lm(build_lm(tiny_lm_config("coarse", coarse_pattern=stage, aligned_semantic=True)),
                     beat_dim=BEAT_DIM).eval()
        length, rate = frames, lm.config.frame_rate
    with torch.no_grad():
        lm.beat.weight.normal_(std=3.0)
    cond = torch.randint(0, 16, (2, 3))
    beat = torch.stack([beat_features(grid_beats(bpm, 1.0), length + 1, rate) for bpm in (70.0, 150.0)])
    if stage == "semantic":
        def run(**kw):
            return lm.generate(cond, length, sampling=SamplingParams(top_k=1), **kw)
    else:
        semantic = torch.randint(0, 8, (2, frames // lm.config.frames_per_semantic))

        def run(**kw):
            return lm.generate(cond, semantic, frames, sampling=SamplingParams(top_k=1), **kw)
    with_grid, without = run(beat=beat), run()
    assert not torch.equal(with_grid, without)
    assert torch.equal(run(beat=beat, beat_guidance=1.0), with_grid)
    assert torch.equal(run(beat=beat, beat_guidance=0.0), without)
    assert torch.equal(run(beat=beat, guidance_scale=3.0, beat_guidance=0.0), run(guidance_scale=3.0))
    if stage == "semantic":  # the null branch reads no grid: b = g pushes towards both, as guide_beat does
        assert torch.equal(run(beat=beat, guidance_scale=3.0, beat_guidance=3.0), run(beat=beat, guidance_scale=3.0))
    assert not torch.equal(run(beat=beat, beat_guidance=8.0), with_grid)


def test_beat_guidance_in_the_pipeline_config():
    from soundsmith.pipelines.tokens import TokenConfig

    assert TokenConfig().stage_beat_guidance("semantic") is None
    per_stage = TokenConfig(beat_guidance={"semantic": 6.0})
    assert (per_stage.stage_beat_guidance("semantic"), per_stage.stage_beat_guidance("coarse")) == (6.0, None)
    assert TokenConfig(beat_guidance=2).stage_beat_guidance("coarse") == 2.0
    with pytest.raises(ValueError, match=r"beat_guidance\['coarse'\] must be a finite number in \[0, 100\]"):
        TokenConfig(beat_guidance={"coarse": "strong"})
    with pytest.raises(ValueError, match="beat_guidance: stages are 'semantic' and 'coarse'"):
        TokenConfig(beat_guidance={"fine": 1.0})
    with pytest.raises(ValueError, match=r"beat_guidance must be a finite number in \[0, 100\]"):
        TokenConfig(beat_guidance=-1.0)
