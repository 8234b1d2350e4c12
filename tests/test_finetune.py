"""Fine-tuning (issue #20): `train unet|*-lm --init MODEL_DIR` starts from a model folder's weights and parts,
`--lora-rank` trains a peft LoRA adapter only (gen/adapters.py), the exports load, a LoRA run resumes, and bad
input is one line with nothing written. Tiny random models (tests/ldm_helpers.py, tests/token_helpers.py)."""

import copy
import json
import re
import shutil

import pytest
import torch
from ldm_helpers import tiny_pipeline as tiny_ldm
from musicgen_helpers import write_tiny_musicgen
from soundsmith.core.weights import weights_fingerprint
from soundsmith.gen import adapters as A
from soundsmith.pipelines import load_pipeline
from soundsmith.train.checkpoint import latest_checkpoint, read_checkpoint
from soundsmith.train.components import COMPONENTS
from token_helpers import tiny_lm_config
from token_helpers import tiny_pipeline as tiny_tokens
from train_helpers import write_corpus

from soundsmith.cli import main

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-5
UNET_RUN = {"max_steps": 2, "batch_size": 2, "crop_seconds": 0.32, "warmup_steps": 1, "log_every": 1,
            "eval_every": 2, "save_every": 2, "keep_last": 5, "num_valid_batches": 1, "sample_prompts": [],
            "captions_per_clip": 2}
LM_RUN = {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "log_every": 1, "eval_every": 2, "save_every": 2,
          "num_valid_batches": 1, "n_captions": 2, "cache_batch": 4}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny model folders (ours: LDM and tokens; MusicGen) and a tiny corpus, written once."""
    w = tmp_path_factory.mktemp("finetune")
    tiny_ldm().save_pretrained(w / "models" / "ldm")
    tiny_tokens().save_pretrained(w / "models" / "tokens")
    write_tiny_musicgen(w / "models" / "musicgen", max_length=60)
    write_corpus(w / "corpus", num_train=6, num_valid=2, seconds=1.0)
    (w / "folder").mkdir()
    return w


def unet_inputs(unet, batch=2, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, frames, 4, generator=g)
    return x, torch.tensor([10, 700][:batch]), torch.randn(batch, c.projection_class_embeddings_input_dim, generator=g)


@torch.no_grad()
def run_unet(unet, inputs):
    x, t, cond = inputs
    return unet(x, t, None, class_labels=cond).sample


@torch.no_grad()
def run_lm(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = lm.config
    coarse = torch.randint(0, c.acoustic_codebook_size, (2, c.n_coarse, 10), generator=g)
    fine = torch.randint(0, c.acoustic_codebook_size, (2, c.n_fine, 10), generator=g)
    return lm(coarse=coarse, fine=fine).logits


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in A.lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ------------------------------------------------------------------------------------------ gen/adapters.py


def test_default_targets_are_the_real_module_names():
    """The defaults name real layers of the shipped UNet (attention only in its mid block) and of our LMs."""
    from diffusers import UNet2DConditionModel
    from soundsmith.core.paths import shipped_models
    from soundsmith.gen.token_lm import build_lm

    unet = UNet2DConditionModel.from_pretrained(shipped_models("default-ldm") / "unet")
    names = [n for n, _ in unet.named_modules()]
    assert A.check_targets(unet) == A.DEFAULT_TARGETS["unet"]
    for target in ("conv1", "conv2", "time_emb_proj", "to_q", "to_out.0"):
        assert any(n.endswith("." + target) for n in names)
    assert "class_embedding" in names
    assert all(n.startswith("mid_block.") for n in names if n.endswith(".to_q"))
    lm = build_lm(tiny_lm_config("coarse"))
    assert A.check_targets(lm) == ("attn.qkv", "attn.proj", "fc", "out")
    A.add_lora(lm, 2)
    adapted = {n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if A._is_tuner_layer(m)}
    assert adapted == {"qkv", "proj", "fc", "out"}  # each block's; not the embeddings' own `proj`
    assert not A._is_tuner_layer(lm.acoustic.proj)


def test_lora_trains_only_the_adapter_and_round_trips(tmp_path):
    """Only LoRA parameters require grad; save -> load gives the in-memory model's output; the folder is peft's own
    format (PeftModel loads it); merging gives the adapted output; scale 0 gives the base."""
    from peft import PeftModel

    unet = tiny_ldm().unet.float()
    base = copy.deepcopy(unet)
    inputs = unet_inputs(unet)
    expected_base = run_unet(base, inputs)
    A.add_lora(unet, 4)
    assert torch.allclose(run_unet(unet, inputs), expected_base)  # B = 0: a fresh adapter changes nothing
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == \
        {n for n, _ in unet.named_parameters() if ".lora_" in n}
    assert A.base_fingerprint(unet) == weights_fingerprint(base)
    randomize_lora(unet)
    adapted = run_unet(unet, inputs)
    assert (adapted - expected_base).abs().max() > 1e-3

    folder = A.save_adapter(unet, tmp_path / "adapter", base_model="tiny")
    assert sorted(p.name for p in folder.iterdir()) == [A.CONFIG_FILE, A.WEIGHTS_FILE, A.INFO_FILE]
    info = A.read_adapter(folder)
    assert (info.component, info.base_fingerprint, info.lora_rank) == ("unet", weights_fingerprint(base), 4)
    assert set(info.targets) == set(A.DEFAULT_TARGETS["unet"])
    from safetensors import safe_open

    with safe_open(str(folder / A.WEIGHTS_FILE), "pt") as f:
        assert all(k.startswith("base_model.model.") and ".lora_" in k for k in f.keys())

    loaded = A.load_adapter(copy.deepcopy(base), folder)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert (run_unet(loaded, inputs) - adapted).abs().max() <= TOL
    assert (run_unet(PeftModel.from_pretrained(copy.deepcopy(base), str(folder)), inputs) - adapted).abs().max() <= TOL
    off = A.load_adapter(copy.deepcopy(base), folder, scale=0.0)
    assert (run_unet(off, inputs) - expected_base).abs().max() <= TOL

    merged = A.merge_adapter(loaded)
    assert not A.has_lora(merged) and type(merged).__name__ == "UNet2DConditionModel"
    assert (run_unet(merged, inputs) - adapted).abs().max() <= TOL
    assert weights_fingerprint(merged) != weights_fingerprint(base)


def test_lm_adapter_round_trip_and_merge(tmp_path):
    from soundsmith.gen.token_lm import build_lm

    torch.manual_seed(0)
    lm = build_lm(tiny_lm_config("fine")).eval()
    base = copy.deepcopy(lm)
    A.add_lora(lm, 2, alpha=4.0)
    randomize_lora(lm)
    adapted = run_lm(lm)
    folder = A.save_adapter(lm, tmp_path / "lm-adapter")
    assert A.read_adapter(folder).component == "fine_lm" and A.read_adapter(folder).lora_alpha == 4.0
    loaded = A.load_adapter(copy.deepcopy(base), folder)
    assert (run_lm(loaded) - adapted).abs().max() <= TOL
    assert (run_lm(A.merge_adapter(loaded)) - adapted).abs().max() <= TOL


def test_an_adapter_for_another_base_is_refused(tmp_path):
    unet = tiny_ldm().unet.float()
    base = copy.deepcopy(unet)
    A.add_lora(unet, 4)
    folder = A.save_adapter(unet, tmp_path / "adapter")
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.conv_in.weight.add_(0.1)
    with pytest.raises(ValueError, match=rf"another base model .*{weights_fingerprint(base)}.*"
                                         rf"{weights_fingerprint(other)}") as err:
        A.load_adapter(other, folder)
    assert "\n" not in str(err.value)
    assert not A.has_lora(other)  # refused before anything changed
    from soundsmith.gen.token_lm import build_lm

    with pytest.raises(ValueError, match="an adapter for the unet, not for the coarse_lm"):
        A.load_adapter(build_lm(tiny_lm_config("coarse")), folder)
    with pytest.raises(FileNotFoundError, match="not a soundsmith adapter folder"):
        A.load_adapter(copy.deepcopy(base), tmp_path)


def test_bad_lora_settings():
    unet = tiny_ldm().unet
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        A.add_lora(copy.deepcopy(unet), 0)
    with pytest.raises(ValueError, match=r"'conv9' names no layer .* valid names include conv1, conv2"):
        A.add_lora(copy.deepcopy(unet), 4, targets=["conv1", "conv9"])


# --------------------------------------------------------------------------------------------- training


def train(component, world, out, **overrides):
    return COMPONENTS[component]()(config=None, data=world / "corpus", out=out, overrides=overrides)


def test_init_starts_from_the_model_weights(world):
    """The model a fine-tuning run starts from is the init folder's component, weight for weight."""
    from soundsmith.train.finetune import load_init, prepare_model
    from soundsmith.train.train_unet import UNetTrainConfig

    init = load_init(world / "models" / "ldm", "unet")
    start = prepare_model(init, UNetTrainConfig(init=str(world / "models" / "ldm")))
    reference = load_pipeline(world / "models" / "ldm").unet
    assert start.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in start.state_dict().items())
    assert all(p.requires_grad for p in start.parameters()) and start.training


def test_unet_lora_run_trains_only_the_adapter(world, tmp_path):
    init_unet = load_pipeline(world / "models" / "ldm").unet
    out = tmp_path / "lora"
    export = train("unet", world, out, init=str(world / "models" / "ldm"), lora_rank=4, lr=1e-2, **UNET_RUN)
    meta, tensors = read_checkpoint(latest_checkpoint(out))
    assert meta["extra"]["config"]["lora_rank"] == 4 and meta["extra"]["config"]["codec"] is None
    reference = init_unet.state_dict()
    base_keys = [k for k in tensors if k.startswith("model/") and ".lora_" not in k]
    assert len(base_keys) == len(reference)
    for key in base_keys:  # the base weights are unchanged
        assert torch.equal(tensors[key], reference[key[len("model/"):].replace(".base_layer.", ".")])
    lora_b = [k for k in tensors if k.startswith("model/") and ".lora_B." in k]
    assert lora_b and any(tensors[k].abs().max() > 0 for k in lora_b)  # the adapter trained
    n_lora = sum(1 for k in tensors if k.startswith("model/") and ".lora_" in k)
    assert len({k.split("/")[2] for k in tensors if k.startswith("optimizer/state/")}) == n_lora
    assert all(".lora_" in k for k in tensors if k.startswith("ema/shadow/"))

    info = A.read_adapter(export)
    assert (info.component, info.base_fingerprint) == ("unet", weights_fingerprint(init_unet))
    assert sum(p.stat().st_size for p in export.iterdir()) < 200_000  # the adapter alone
    adapted = A.load_adapter(copy.deepcopy(init_unet), export)
    assert A.has_lora(adapted)


def test_full_finetune_export_loads(world, tmp_path):
    """A full fine-tune exports a complete model folder: its parts copied when the init folder is out of reach
    of links, linked (no copies) when loading may follow the links."""
    export = train("unet", world, tmp_path / "full", init=str(world / "models" / "ldm"), **UNET_RUN)
    assert sorted(json.loads((export / "config.json").read_text())["components"].values()) == \
        ["clap", "scheduler", "unet", "vae"]
    pipe = load_pipeline(export)
    pipe.progress_bar = False
    audio = pipe("a tone", duration_s=0.5, seed=0).audios
    assert audio.shape == (1, 1, 8000) and torch.isfinite(audio).all()
    assert weights_fingerprint(pipe.unet) != weights_fingerprint(load_pipeline(world / "models" / "ldm").unet)

    out = tmp_path / "linked"  # the init folder inside the run folder: the export's models tree
    shutil.copytree(world / "models" / "ldm", out / "base")
    export = train("unet", world, out, init=str(out / "base"), **UNET_RUN)
    components = json.loads((export / "config.json").read_text())["components"]
    assert components == {"unet": "unet", "vae": "../base/vae", "clap": "../base/clap", "scheduler": "../base/scheduler"}
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "unet"]
    load_pipeline(export)("a tone", duration_s=0.5, seed=0)


def test_lora_run_resumes_exactly(world, tmp_path):
    overrides = {"init": str(world / "models" / "ldm"), "lora_rank": 4, **UNET_RUN, "max_steps": 4}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train("unet", world, straight, **overrides)
    COMPONENTS["unet"]()(config=None, data=world / "corpus", out=resumed, overrides=overrides, max_steps=2)
    COMPONENTS["unet"]()(config=None, data=world / "corpus", out=resumed, resume=True, max_steps=4)
    _, a = read_checkpoint(latest_checkpoint(straight))
    _, b = read_checkpoint(latest_checkpoint(resumed))
    keys = [k for k in a if k.startswith(("ema/shadow/", "model/"))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    assert json.loads((resumed / "config.json").read_text())["init"] == str(world / "models" / "ldm")


def test_token_lms_fine_tune(world, tmp_path):
    tokens = world / "models" / "tokens"
    export = train("coarse-lm", world, tmp_path / "coarse", init=str(tokens), **LM_RUN)
    pipe = load_pipeline(export)
    pipe.progress_bar = False
    assert pipe.fingerprints()["coarse_lm"] != load_pipeline(tokens).fingerprints()["coarse_lm"]
    assert torch.isfinite(pipe("a tone", duration_s=0.4, seed=0).audios).all()

    export = train("fine-lm", world, tmp_path / "fine", init=str(tokens), lora_rank=2, **LM_RUN)
    fine = load_pipeline(tokens).fine_lm
    info = A.read_adapter(export)
    assert (info.component, info.base_fingerprint) == ("fine_lm", weights_fingerprint(fine))
    assert set(info.targets) == {"attn.qkv", "attn.proj", "fc", "out"}
    A.load_adapter(fine, export)


def test_coarse_lm_grows_aligned_semantic_from_init(world, tmp_path):
    """`model: {"aligned_semantic": true}` with --init grows the init's coarse LM (new table at zero) and the
    export is a model folder whose coarse LM reads the plan frame by frame; with LoRA it is a one-line error."""
    from soundsmith.train.finetune import growth, load_init
    from soundsmith.train.train_token_lm import TokenLMTrainConfig

    tokens = world / "models" / "tokens"
    export = train("coarse-lm", world, tmp_path / "grown", init=str(tokens), model={"aligned_semantic": True},
                   **LM_RUN)
    pipe = load_pipeline(export)
    assert pipe.coarse_lm.config.aligned_semantic and pipe.coarse_lm.aligned.weight.abs().sum() > 0
    assert not load_pipeline(tokens).coarse_lm.config.aligned_semantic
    init = load_init(tokens, "coarse_lm")
    cfg = TokenLMTrainConfig(init=str(tokens), lora_rank=2, model={"aligned_semantic": True})
    with pytest.raises(ValueError, match="aligned_semantic grow the LM, which a LoRA run cannot"):
        growth(init, cfg, "my.json")


def test_diffusers_audioldm_init(world, tmp_path):
    """A diffusers AudioLDM folder (the parity tests' tiny one, text-only CLAP) fine-tunes: its CLAP's empty-text
    embedding is the dropped condition, its epsilon schedule the target; the full export loads in our layout."""
    import warnings

    from diffusers import AudioLDMPipeline
    from test_ldm_diffusers_parity import text_config, tiny_parts, tiny_tokenizer
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    unet, vae, vocoder, scheduler = tiny_parts()
    tokenizer = tiny_tokenizer()
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(**text_config(len(tokenizer)))).eval()
    folder = tmp_path / "audioldm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         vocoder=vocoder).save_pretrained(folder)
    run = {**UNET_RUN, "crop_seconds": 0.64}
    export = train("unet", world, tmp_path / "lora", init=str(folder), lora_rank=2, **run)
    assert A.read_adapter(export).base_fingerprint == weights_fingerprint(unet)
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["condition"] == "text" and config["prediction_type"] == "epsilon"
    export = train("unet", world, tmp_path / "full", init=str(folder), **run)
    pipe = load_pipeline(export)
    pipe.progress_bar = False
    assert torch.isfinite(pipe("a dog barks", duration_s=0.5, num_inference_steps=2, seed=0).audios).all()


@pytest.mark.parametrize("name", ["unet-lora", "unet-finetune", "lm-lora", "lm-finetune"])
def test_finetune_configs_are_complete(name):
    """The fine-tuning recipes name every field and load once `init` is given; LoRA ones set a rank."""
    import dataclasses

    from soundsmith.train.config import CONFIGS, load_config
    from soundsmith.train.train_token_lm import TokenLMTrainConfig
    from soundsmith.train.train_unet import UNetTrainConfig

    cls = UNetTrainConfig if name.startswith("unet") else TokenLMTrainConfig
    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(cls)}
    cfg = load_config(cls, CONFIGS / f"{name}.json", {"init": "models/x"})
    assert (cfg.lora_rank is not None) == name.endswith("lora") and cfg.model == {}
    assert cfg.max_steps <= 300 and cfg.eval_every >= cfg.max_steps  # minutes on a CPU; samples at the end only


def test_progress_bar_shows_steps_per_second_and_eta():
    from soundsmith.train.metrics_log import BAR_FORMAT

    assert "{rate_noinv_fmt}" in BAR_FORMAT and "ETA {remaining}" in BAR_FORMAT


# ------------------------------------------------------------------------------------------------ bad input


BAD = [
    ("init-not-a-model", ["train", "unet", "--init", "{W}/folder"], "not a soundsmith model folder"),
    ("init-missing", ["train", "unet", "--init", "{W}/nowhere"], "model folder not found"),
    ("init-tokens-for-unet", ["train", "unet", "--init", "{W}/models/tokens"], "a tokens model has no unet"),
    ("init-ldm-for-lm", ["train", "semantic-lm", "--init", "{W}/models/ldm"], "a ldm model has no semantic lm"),
    ("init-musicgen-for-lm", ["train", "coarse-lm", "--init", "{W}/models/musicgen"],
     "a MusicGen folder; our token LMs .* cannot start from"),
    ("lora-without-init", ["train", "unet", "--lora-rank", "4"], r"give init \(--init MODEL_DIR\)"),
    ("unknown-targets", ["train", "unet", "--init", "{W}/models/ldm", "--lora-rank", "4", "--lora-targets",
                         "conv1,banana"], "'banana' names no layer of the unet .* valid names include conv1"),
    ("unknown-lm-targets", ["train", "fine-lm", "--init", "{W}/models/tokens", "--lora-rank", "4", "--lora-targets",
                            "to_q"], "'to_q' names no layer of the fine_lm .* attn.qkv"),
    ("init-for-vae", ["train", "vae", "--init", "{W}/models/ldm"], "--init applies to unet, semantic-lm"),
    ("alpha-without-rank", ["train", "unet", "--init", "{W}/models/ldm", "--lora-alpha", "4"],
     "'lora_alpha' applies to a LoRA run"),
]


@pytest.mark.parametrize("argv, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(world, argv, needle, capsys):
    run = world / "run"
    code = main([*(a.replace("{W}", str(world)) for a in argv), "--data", str(world / "corpus"), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("soundsmith: error: ") and err.count("\n") == 1, err
    assert re.search(needle, err), err
    assert not run.exists() and not (world / "token-cache").exists()


@pytest.mark.parametrize("rank", ["0", "-2", "x"])
def test_bad_lora_rank_is_a_usage_error(world, rank, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "unet", "--init", str(world / "models" / "ldm"), "--lora-rank", rank, "--data",
              str(world / "corpus"), "--out", str(world / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--lora-rank" in err and err.count("\n") == 1
    assert not (world / "run").exists()


def test_lm_targets_stay_in_the_blocks():
    """A target that would also adapt an LM's embedding projection (read by weight by its tied output head) is
    refused; block layers by their short names are fine."""
    from soundsmith.gen.token_lm import build_lm

    lm = build_lm(tiny_lm_config("coarse"))
    with pytest.raises(ValueError, match=r"'proj' also names (acoustic|cond)\.proj, whose weight .* tied output head"):
        A.add_lora(copy.deepcopy(lm), 2, targets=["proj"])
    with pytest.raises(ValueError, match="'table' names no layer"):
        A.add_lora(copy.deepcopy(lm), 2, targets=["table"])
    assert A.check_targets(lm, ["qkv", "out"]) == ("qkv", "out")


def test_init_wins_over_part_fields(world, caplog):
    """Config fields naming other parts are ignored with --init (the folder's parts are used), with a warning."""
    from soundsmith.train.finetune import load_init
    from soundsmith.train.train_unet import UNetTrainConfig, _init_config

    init = load_init(world / "models" / "ldm", "unet")
    cfg = UNetTrainConfig(init=str(world / "models" / "ldm"), codec="models/mel-codec", clap="models/clap",
                          model={"block_out_channels": [8]})
    with caplog.at_level("WARNING", logger="soundsmith.train.finetune"):
        fixed = _init_config(cfg, init, "my.json")
    assert (fixed.codec, fixed.clap, fixed.model) == (None, None, {})
    assert "ignoring field(s) codec='models/mel-codec', clap='models/clap', model=" in caplog.text
