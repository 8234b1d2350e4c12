"""Bad input across the CLI (issue #21): each mistake ends in one line on stderr, `soundsmith: error: ...`, with
exit status 2 (`data stats` finding problems: 1, as documented), no traceback, and nothing written or changed.
Then what the table cannot show: the same checks through the Python API, the long-prompt warning, and the
containment of the paths that model configs and prompt files name (core/paths.py).

The tiny model folders of the other tests, built once for the module."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_helpers import tiny_pipeline as tiny_ldm
from musicgen_helpers import write_tiny_musicgen
from soundsmith.codecs.audio import write_audio
from soundsmith.core.paths import SHIPPED_MODELS, model_link, resolve_inside
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines import load_pipeline
from soundsmith.pipelines.prompts import read_prompt_file
from token_helpers import tiny_pipeline as tiny_tokens
from train_helpers import write_corpus

from soundsmith.cli import main

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BIG_SEED = str(2**63 - 1)


class Evil:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()  # the packaged MiniLM, offline


@pytest.fixture(scope="module")
def ldm_pipe(encoder):
    return tiny_ldm(encoder)


@pytest.fixture(scope="module")
def tokens_pipe(encoder):
    return tiny_tokens(encoder)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ldm_pipe, tokens_pipe) -> Path:
    """Everything the table's commands read: tiny models (good and broken), corpora, prompt files, checkpoints."""
    w = tmp_path_factory.mktemp("bad-inputs")
    models = w / "models"
    ldm = ldm_pipe.save_pretrained(models / "ldm")
    tokens_pipe.save_pretrained(models / "tokens")
    mg = write_tiny_musicgen(models / "musicgen", max_length=60)
    _broken_musicgens(mg, models)
    _broken_links(ldm, models)
    (w / "file.txt").write_text("hello")
    (w / "folder").mkdir()
    (w / "binary-config").mkdir()
    (w / "binary-config" / "config.json").write_bytes(b"\xff\xfe\x00\x81binary")
    _corpora(w)
    _prompt_files(w)
    torch.save({"state_dict": Evil()}, w / "evil.ckpt")
    (w / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    write_audio(w / "short.wav", np.zeros((1, 800), np.float32), 16000)
    return w


def _broken_musicgens(good: Path, models: Path) -> None:
    trunc = shutil.copytree(good, models / "mg-truncated")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    bad = shutil.copytree(good, models / "mg-bad-config")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "decoder": "banana"}))
    pickled = shutil.copytree(good, models / "mg-pickle")
    (pickled / "model.safetensors").unlink()
    torch.save({"decoder.weight": Evil()}, pickled / "pytorch_model.bin")


def _broken_links(ldm: Path, models: Path) -> None:
    config = json.loads((ldm / "config.json").read_text())
    for name, components, vocoder in (
        ("escape-relative", {**config["components"], "clap": "../../../../../../../../etc"}, config["vocoder"]),
        ("escape-absolute", {**config["components"], "unet": "/etc"}, config["vocoder"]),
        ("escape-vocoder", config["components"], {"name": "hifigan", "path": "../../../../../../../../etc"}),
    ):
        folder = shutil.copytree(ldm, models / name)
        (folder / "config.json").write_text(json.dumps({**config, "components": components, "vocoder": vocoder}))
    rvq = models / "escape-rvq"
    rvq.mkdir()
    (rvq / "config.json").write_text(json.dumps({"_class_name": "MelRVQCodec", "mel_codec": "../../../../../../etc"}))


def _corpora(w: Path) -> None:
    write_corpus(w / "corpus", num_train=2, num_valid=1, seconds=0.3)
    (w / "binary-corpus").mkdir()
    (w / "binary-corpus" / "metadata.jsonl").write_bytes(b"\xff\xfe\x00garbage\x80\n")
    (w / "missing-corpus").mkdir()
    (w / "missing-corpus" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "train/gone.wav", "caption": "a tone", "split": "train"}) + "\n")


def _prompt_files(w: Path) -> None:
    rows = {"caption-int": {"caption": 12345}, "labels-string": {"caption": "rain", "labels": "rain"},
            "label-no-domain": {"prompt": "rain", "label": "rain"},
            "escape": {"caption": "rain", "file_name": "../../../../../../etc/passwd"},
            "escape-absolute": {"caption": "rain", "file_name": "/etc/passwd"}}
    for name, row in rows.items():
        (w / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    (w / "escape.csv").write_text("caption,file_name\nrain,../../../../../../etc/passwd\n")


# (id, argv with {W} for the folder, exit status, a regex the one line must match)
CASES = [
    # generate: the three traceback causes
    ("utf8-prompt-ldm", ["generate", "rain \udcff", "--model", "{W}/models/ldm"], 2,
     r"prompt 'rain \\xff' is not valid UTF-8 text"),
    ("utf8-prompt-tokens", ["generate", "rain \udcff", "--model", "{W}/models/tokens"], 2,
     r"prompt 'rain \\xff' is not valid UTF-8 text"),
    ("utf8-prompt-musicgen", ["generate", "rain \udcff", "--model", "{W}/models/musicgen"], 2,
     r"prompt 'rain \\xff' is not valid UTF-8 text"),
    ("utf8-negative", ["generate", "rain", "--negative", "dog \udce9", "--model", "{W}/models/ldm"], 2,
     r"--negative 'dog \\xe9' is not valid UTF-8 text"),
    ("musicgen-truncated", ["generate", "rain", "--model", "{W}/models/mg-truncated"], 2,
     r"mg-truncated/model.safetensors: corrupt or truncated safetensors file"),
    ("musicgen-bad-config", ["generate", "rain", "--model", "{W}/models/mg-bad-config"], 2,
     r"mg-bad-config/config.json: not a valid MusicGen config .*decoder"),
    ("musicgen-pickle", ["generate", "rain", "--model", "{W}/models/mg-pickle"], 2,
     r"mg-pickle/pytorch_model.bin: needs full unpickling, which can run arbitrary code \(it holds posix.system\)"),
    ("flow-matching-scheduler", ["generate", "rain", "--model", "{W}/models/ldm", "--scheduler",
                                 "FlowMatchEulerDiscreteScheduler"], 2,
     r"scheduler must be one of dpmsolver\+\+, .* DPMSolverMultistepScheduler, .*; got "
     r"'FlowMatchEulerDiscreteScheduler' \(it samples another process"),
    # generate: messages made right and early
    ("duration-too-short", ["generate", "rain", "--model", "{W}/models/ldm", "--duration", "0.001"], 2,
     r"duration_s must be a finite number in \[0.04, 8\], got 0.001"),
    ("model-is-a-file", ["generate", "rain", "--model", "{W}/file.txt"], 2,
     r"a model is a folder \(with config.json\), got a file: .*file.txt"),
    ("model-is-a-mel-codec", ["generate", "rain", "--model", str(SHIPPED_MODELS / "mel-codec")], 2,
     r"mel-codec is a mel codec folder \(MelLatentCodec\), not a generation model"),
    ("model-is-a-clap", ["generate", "rain", "--model", "{W}/models/ldm/clap"], 2,
     r"clap is a CLAP folder \(soundsmith-clap\), not a generation model"),
    ("model-binary-config", ["generate", "rain", "--model", "{W}/binary-config"], 2,
     r"binary-config/config.json: not a UTF-8 text file"),
    ("model-missing", ["generate", "rain", "--model", "{W}/nowhere"], 2, r"model folder not found: .*nowhere"),
    ("prompts-file-is-a-folder", ["generate", "--prompts-file", "{W}/folder", "--model", "{W}/models/ldm"], 2,
     r"prompts file is a folder, not a file: .*folder"),
    ("prompts-file-missing", ["generate", "--prompts-file", "{W}/nowhere.txt"], 2, r"prompts file not found"),
    ("seed-overflows", ["generate", "rain", "--model", "{W}/models/ldm", "--seed", BIG_SEED, "--num", "2"], 2,
     r"--seed: seed 9223372036854775807 is too large for 2 outputs: .* use a seed <= 9223372036854775806"),
    ("seed-negative", ["generate", "rain", "--seed", "-1"], 2, r"argument --seed: must be in \[0, 2\*\*63-1\]"),
    ("duration-zero", ["generate", "rain", "--duration", "0"], 2, r"argument --duration: must be in \(0, inf\]"),
    ("steps-zero", ["generate", "rain", "--steps", "0"], 2, r"argument --steps: must be in \[1, 1000\]"),
    ("no-prompt", ["generate", "--model", "{W}/models/ldm"], 2, r"give a prompt or --prompts-file FILE"),
    ("empty-prompt", ["generate", " ", "--model", "{W}/models/ldm"], 2, r"prompt is empty"),
    ("top-k-for-ldm", ["generate", "rain", "--model", "{W}/models/ldm", "--top-k", "5"], 2,
     r"--top-k applies to token models"),
    ("semantic-candidates-for-ldm", ["generate", "rain", "--model", "{W}/models/ldm", "--semantic-candidates", "4"],
     2, r"--semantic-candidates applies to token models"),
    ("semantic-candidates-zero", ["generate", "rain", "--model", "{W}/models/ldm", "--semantic-candidates", "0"],
     2, r"--semantic-candidates: must be in \[1, 64\], got 0"),
    ("beat-guidance-for-ldm", ["generate", "rain", "--model", "{W}/models/ldm", "--beat-guidance", "4"],
     2, r"--beat-guidance applies to token models"),
    ("beat-guidance-negative", ["generate", "rain", "--model", "{W}/models/ldm", "--beat-guidance", "-1"],
     2, r"--beat-guidance: must be in \[0, 100\], got -1"),
    ("out-under-a-file", ["generate", "rain", "--model", "{W}/models/ldm", "--out", "{W}/file.txt/out"], 2,
     r"cannot be created"),
    # generate: containment of the links a model's config names
    ("component-escapes", ["generate", "rain", "--model", "{W}/models/escape-relative"], 2,
     r"escape-relative/config.json: part 'clap' '\.\./\.\./.*/etc' leads outside .*/models \(to /etc\)"),
    ("component-absolute", ["generate", "rain", "--model", "{W}/models/escape-absolute"], 2,
     r"escape-absolute/config.json: part 'unet' '/etc' leads outside"),
    ("vocoder-path-escapes", ["generate", "rain", "--model", "{W}/models/escape-vocoder"], 2,
     r"escape-vocoder/config.json 'vocoder': vocoder path '\.\./.*/etc' leads outside"),
    # data
    ("stats-binary-metadata", ["data", "stats", "{W}/binary-corpus"], 2,
     r"binary-corpus/metadata.jsonl line 1: not UTF-8 text"),
    ("stats-missing-folder", ["data", "stats", "{W}/nowhere"], 2, r"data set not found"),
    ("stats-finds-problems", ["data", "stats", "{W}/missing-corpus"], 1,
     r"^soundsmith: data stats: problems found \(1 missing\)"),
    ("synth-out-is-a-file", ["data", "synth", "--out", "{W}/file.txt", "--num-clips", "2"], 2, r"file.txt"),
    ("synth-bad-domain", ["data", "synth", "--out", "{W}/new-corpus", "--num-clips", "2", "--domains", "banana"], 2,
     r"banana"),
    ("synth-no-size", ["data", "synth", "--out", "{W}/new-corpus"], 2, r"one of the arguments --num-clips --hours"),
    ("prompts-missing-corpus", ["data", "prompts", "{W}/nowhere", "--out", "{W}/sets"], 2, r"nowhere"),
    # train
    ("train-unknown-component", ["train", "banana", "--data", "{W}/corpus", "--out", "{W}/run"], 2,
     r"unknown component 'banana'"),
    ("train-set-out-of-range", ["train", "vae", "--data", "{W}/corpus", "--out", "{W}/run", "--set", "lr=-1"], 2,
     r"error: override lr=-1: field 'lr' must be in \(0, 1\], got -1.0$"),
    ("train-set-unknown-key", ["train", "vae", "--data", "{W}/corpus", "--out", "{W}/run", "--set", "nope=1"], 2,
     r"override: unknown key 'nope'"),
    ("train-set-no-equals", ["train", "vae", "--data", "{W}/corpus", "--out", "{W}/run", "--set", "lr"], 2,
     r"expected key=value"),
    ("train-config-missing", ["train", "vae", "--config", "{W}/nowhere.json", "--data", "{W}/corpus", "--out",
                              "{W}/run"], 2, r"config file not found"),
    ("train-binary-metadata", ["train", "vae", "--data", "{W}/binary-corpus", "--out", "{W}/run"], 2,
     r"binary-corpus/metadata.jsonl line 1: not UTF-8 text"),
    ("train-missing-audio", ["train", "vae", "--data", "{W}/missing-corpus", "--out", "{W}/run"], 2,
     r"audio file not found: .*gone.wav .*; restore the file or remove its row \(`soundsmith data stats DATA`"),
    ("train-data-missing", ["train", "vae", "--data", "{W}/nowhere", "--out", "{W}/run"], 2, r"nowhere"),
    # eval run: prompt files
    ("eval-caption-not-a-string", ["eval", "run", "--model", "{W}/models/ldm", "--prompts", "{W}/caption-int.jsonl",
                                   "--out", "{W}/eval"], 2,
     r"caption-int.jsonl:1: the 'caption' field must be a string, got int 12345"),
    ("eval-labels-not-an-object", ["eval", "run", "--model", "{W}/models/ldm", "--prompts",
                                   "{W}/labels-string.jsonl", "--out", "{W}/eval"], 2,
     r"labels-string.jsonl:1: malformed labels: 'labels' must be an object"),
    ("eval-label-without-domain", ["eval", "run", "--model", "{W}/models/ldm", "--prompts",
                                   "{W}/label-no-domain.jsonl", "--out", "{W}/eval"], 2,
     r"label-no-domain.jsonl:1: malformed labels: 'label' needs a 'domain'"),
    ("eval-reference-escapes", ["eval", "run", "--model", "{W}/models/ldm", "--prompts", "{W}/escape.jsonl",
                                "--reference", "{W}/corpus", "--out", "{W}/eval"], 2,
     r"escape.jsonl:1: reference clip '\.\./.*etc/passwd' leads outside .*/corpus"),
    ("eval-reference-absolute", ["eval", "run", "--model", "{W}/models/ldm", "--prompts",
                                 "{W}/escape-absolute.jsonl", "--reference", "{W}/corpus", "--out", "{W}/eval"], 2,
     r"reference clip '/etc/passwd' leads outside"),
    ("eval-csv-reference-escapes", ["eval", "run", "--model", "{W}/models/ldm", "--prompts", "{W}/escape.csv",
                                    "--reference", "{W}/corpus", "--out", "{W}/eval"], 2,
     r"escape.csv:2: reference clip '\.\./.*' leads outside"),
    ("eval-prompts-is-a-folder", ["eval", "run", "--prompts", "{W}/folder", "--out", "{W}/eval"], 2,
     r"prompts file is a folder"),
    ("eval-codec-link-escapes", ["eval", "codec", "--model", "{W}/models/escape-rvq", "--data", "{W}/corpus",
                                 "--split", "train"], 2,
     r"escape-rvq/config.json: mel_codec '\.\./.*/etc' leads outside"),
    ("eval-score-missing-folder", ["eval", "score", "--generated", "{W}/nowhere", "--metrics", "is"], 2, r"nowhere"),
    # convert, detect, assemble
    ("convert-unknown-format", ["convert", "banana", "{W}/junk.ckpt", "{W}/converted"], 2,
     r"unknown source format 'banana'"),
    ("convert-malicious-pickle", ["convert", "audioldm", "{W}/evil.ckpt", "{W}/converted"], 2,
     r"evil.ckpt: needs full unpickling, which can run arbitrary code \(it holds posix.system\); refusing"),
    ("convert-junk", ["convert", "audioldm", "{W}/junk.ckpt", "{W}/converted"], 2,
     r"junk.ckpt: corrupt or truncated checkpoint \(Unsupported operand"),
    ("convert-missing-source", ["convert", "audioldm", "{W}/nowhere.ckpt", "{W}/converted"], 2,
     r"checkpoint not found"),
    ("detect-missing-file", ["detect", "{W}/nowhere.wav"], 2, r"nowhere.wav"),
    ("detect-not-audio", ["detect", "{W}/file.txt"], 2, r"file.txt"),
    ("detect-too-short", ["detect", "{W}/short.wav"], 2, r"short.wav"),
    ("assemble-link-outside-tree", ["assemble", "tokens", "--out", "{W}/new/tokens", "--clap",
                                    "{W}/models/tokens/clap", "--link-clap", "--cond-rvq", "{W}/models/tokens/cond_rvq",
                                    "--kmeans", "{W}/models/tokens/kmeans", "--semantic-lm",
                                    "{W}/models/tokens/semantic_lm", "--coarse-lm", "{W}/models/tokens/coarse_lm",
                                    "--codec", "{W}/models/tokens/codec"], 2,
     r"link\['clap'\]: .*/models/tokens/clap is not beside the model \(inside .*/new\).*; copy the part instead"),
    ("assemble-missing-part", ["assemble", "tokens", "--out", "{W}/new/tokens", "--clap", "{W}/models/tokens/clap",
                               "--cond-rvq", "{W}/nowhere", "--kmeans", "{W}/models/tokens/kmeans", "--semantic-lm",
                               "{W}/models/tokens/semantic_lm", "--coarse-lm", "{W}/models/tokens/coarse_lm",
                               "--codec", "{W}/models/tokens/codec"], 2, r"part 'cond_rvq' not found"),
]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`, with size and modification time (a change shows)."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, code, needle", [pytest.param(a, c, n, id=i) for i, a, c, n in CASES])
def test_a_bad_input_is_one_line_and_writes_nothing(world, argv, code, needle, capsys, monkeypatch):
    import re

    monkeypatch.chdir(world)  # default outputs (generate's outputs/, data prompts' benchmarks/) land here
    monkeypatch.setenv("SOUNDSMITH_CACHE", str(world / "cache"))  # and the eval cache
    before = snapshot(world)
    try:
        got = main([part.replace("{W}", str(world)) for part in argv])
    except SystemExit as stop:  # argparse refuses a bad value before anything runs
        got = stop.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("soundsmith: "), err
    assert re.search(needle, lines[0]), lines[0]
    after = snapshot(world)
    assert after == before, f"new: {sorted(set(after) - set(before))}, changed or removed: " \
                            f"{sorted(k for k in before if after.get(k) != before[k])}"


def test_the_table_is_at_least_45_distinct_inputs():
    assert len({i for i, *_ in CASES}) == len(CASES) >= 45
    commands = {a[0] if a[0] not in ("data", "eval") else " ".join(a[:2]) for _, a, _, _ in CASES}
    assert commands >= {"generate", "data synth", "data stats", "data prompts", "train", "eval run", "eval score",
                        "convert", "detect", "assemble"}


def test_non_utf8_bytes_from_a_real_command_line(world):
    # what a shell passes for "$(printf 'rain \xff')": bytes, which Python's argv holds as "rain \udcff"
    out = subprocess.run([sys.executable, "-m", "soundsmith.cli", "generate", b"rain \xff", "--model",
                          str(world / "models" / "ldm"), "--out", str(world / "never")], capture_output=True)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "soundsmith: error: prompt 'rain \\xff' is not valid UTF-8 text" in err
    assert not (world / "never").exists()


# ------------------------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("which", ["ldm", "tokens", "musicgen"])
def test_the_pipelines_refuse_undecodable_text_before_any_work(world, ldm_pipe, tokens_pipe, which):
    pipe = {"ldm": ldm_pipe, "tokens": tokens_pipe}.get(which) or load_pipeline(world / "models" / "musicgen")
    calls = []
    with pytest.raises(ValueError, match=r"prompt\[1\] 'b\\xff' is not valid UTF-8 text"):
        pipe(["a", "b\udcff"], duration_s=0.1, callback=lambda *step: calls.append(step))
    with pytest.raises(ValueError, match=r"negative_prompt 'x\\ud800' is not valid UTF-8 text"):
        pipe("a", negative_prompt="x\ud800", duration_s=0.1, callback=lambda *step: calls.append(step))
    assert calls == []  # refused before the first sampling step


def test_seeds_never_wrap(ldm_pipe):
    with pytest.raises(ValueError, match="seed 9223372036854775807 is too large for 2 outputs"):
        ldm_pipe("rain", duration_s=0.1, seed=2**63 - 1, num_waveforms_per_prompt=2)
    out = ldm_pipe("rain", duration_s=0.1, seed=2**63 - 2, num_waveforms_per_prompt=2, rerank=False)
    assert out.seeds == [2**63 - 2, 2**63 - 1]


def test_musicgen_without_a_duration_takes_its_default(world):
    # the CLI passes duration_s=None when --duration is not given ("the model's"): MusicGen refused None
    from soundsmith.pipelines.base import GenerationCancelled

    pipe = load_pipeline(world / "models" / "musicgen")
    totals = []

    def stop(step: int, total: int) -> bool:
        totals.append(total)
        return False  # cancel at the first step

    with pytest.raises(GenerationCancelled):
        pipe("rain", seed=0, callback=stop)
    assert totals[0] > 5 * 200  # 5 s of 200 frames/s (plus the delay steps of every window)


@pytest.mark.parametrize("which, top", [("ldm", 8), ("tokens", 4)])
def test_the_shortest_duration_fails_before_sampling(ldm_pipe, tokens_pipe, which, top):
    pipe = ldm_pipe if which == "ldm" else tokens_pipe
    steps = []
    with pytest.raises(ValueError, match=rf"duration_s must be a finite number in \[0.04, {top}\]"):
        pipe("rain", duration_s=0.001, callback=lambda *step: steps.append(step))
    assert steps == []
    assert pipe("rain", duration_s=0.04, seed=0).audios.shape[-1] == 640  # the shortest allowed works


@pytest.mark.parametrize("which", ["ldm", "tokens"])
def test_a_long_prompt_is_cut_with_one_warning(ldm_pipe, tokens_pipe, which, caplog):
    pipe = ldm_pipe if which == "ldm" else tokens_pipe
    prompt = "rain on a tin roof " * 600  # ~11,000 characters
    with caplog.at_level(logging.WARNING, logger="soundsmith"):
        pipe([prompt, "wind"], negative_prompt="noise", duration_s=0.2, seed=0, num_waveforms_per_prompt=2)
    warned = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    assert len(warned) == 1, warned  # once per call, though the text is encoded several times
    assert "the text encoder reads only its first 128 tokens" in warned[0] and "characters" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="soundsmith"):
        pipe("rain", duration_s=0.2, seed=0)
    assert not [r for r in caplog.records if "tokens long" in r.getMessage()]


# ----------------------------------------------------------------------------------------- containment


def test_resolve_inside_folds_dots_and_refuses_what_leaves(tmp_path):
    root = tmp_path / "ref"
    assert resolve_inside("a/../b.wav", root, [root], where="p") == root / "b.wav"
    assert resolve_inside(str(root / "c.wav"), tmp_path, [root], where="p") == root / "c.wav"  # absolute, inside
    for name in ("../x.wav", "a/../../x.wav", "/etc/passwd", str(tmp_path / "refx" / "y.wav")):
        with pytest.raises(ValueError, match=r"p: reference clip .* leads outside"):
            resolve_inside(name, root, [root], where="p", what="reference clip")
    with pytest.raises(ValueError, match="empty"):
        resolve_inside(" ", root, [root], where="p")
    # a symbolic link inside the folder is the disk owner's choice: followed, not judged
    (tmp_path / "elsewhere").mkdir()
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert resolve_inside("link/z.wav", root, [root], where="p") == root / "link" / "z.wav"


def test_model_links_stay_in_the_models_tree(tmp_path):
    models = tmp_path / "models"
    model = models / "default-tokens"
    assert model_link("../clap", model, where="c", what="part") == models / "clap"  # the shipped layout
    assert model_link("../mel-codec/vae", model, where="c", what="part") == models / "mel-codec" / "vae"
    assert model_link("codec", model, where="c", what="part") == model / "codec"
    assert model_link(str(SHIPPED_MODELS / "mel-codec"), model, where="c", what="part") == SHIPPED_MODELS / "mel-codec"
    for name in ("../../clap", "../../../../etc", "/etc", str(tmp_path / "clap")):
        with pytest.raises(ValueError, match=r"c: part .* leads outside .*/models \(to "):
            model_link(name, model, where="c", what="part")
    # a part nested in a pipeline folder may reach the pipeline's siblings when the caller names that tree
    assert model_link("../../mel-codec", model / "codec", tree=models, where="c", what="x") == models / "mel-codec"


def test_the_shipped_layout_loads_and_a_sibling_clap_is_followed(ldm_pipe, tmp_path):
    # ldm/ linking ../clap and ../mel-codec/vae, as models/default-ldm does
    folder = ldm_pipe.save_pretrained(tmp_path / "models" / "ldm")
    shutil.move(folder / "clap", tmp_path / "models" / "clap")
    (tmp_path / "models" / "mel-codec").mkdir()
    shutil.move(folder / "vae", tmp_path / "models" / "mel-codec" / "vae")
    shutil.move(folder / "vocoder", tmp_path / "models" / "mel-codec" / "vocoder")
    config = json.loads((folder / "config.json").read_text())
    config["components"].update(clap="../clap", vae="../mel-codec/vae")
    (folder / "config.json").write_text(json.dumps(config))
    pipe = load_pipeline(folder)
    assert pipe.watermark_payload == ldm_pipe.watermark_payload  # the same weights
    # one more level up leaves the models tree
    shutil.copytree(tmp_path / "models" / "mel-codec", tmp_path / "mel-codec")
    config["components"]["vae"] = "../../mel-codec/vae"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"part 'vae' '\.\./\.\./mel-codec/vae' leads outside .*/models \(to "):
        load_pipeline(folder)


def test_token_model_and_mel_rvq_links(tokens_pipe, tmp_path):
    folder = tokens_pipe.save_pretrained(tmp_path / "models" / "tok")
    config = json.loads((folder / "config.json").read_text())
    config["components"]["kmeans"] = "../../../../../../../../tmp"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tok/config.json: part 'kmeans' '\.\./.*tmp' leads outside"):
        load_pipeline(folder)
    with pytest.raises(ValueError, match=r"link\['clap'\]: .* is not beside the model"):  # nothing written
        tokens_pipe.save_pretrained(tmp_path / "other" / "tok", link={"clap": folder / "clap"})
    assert not (tmp_path / "other").exists()


def test_prompt_file_references_stay_in_the_reference_folder(tmp_path):
    ref = tmp_path / "ref"
    (ref / "test").mkdir(parents=True)
    rows = [{"prompt": "a", "file_name": "test/0001.wav"}, {"prompt": "b", "file_name": str(ref / "x.wav")}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_prompt_file(tmp_path / "p.jsonl", reference_dir=ref)
    assert [i.reference for i in items] == [ref / "test" / "0001.wav", ref / "x.wav"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "a", "file_name": "test/../../p.jsonl"}) + "\n")
    with pytest.raises(ValueError, match=r"q.jsonl:1: reference clip 'test/\.\./\.\./p.jsonl' leads outside"):
        read_prompt_file(tmp_path / "q.jsonl", reference_dir=ref)
    # without --reference, the prompt file's own folder is the one; generation reads no references at all
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.jsonl").write_text(json.dumps({"prompt": "a", "file_name": "../p.jsonl"}) + "\n")
    with pytest.raises(ValueError, match="leads outside"):
        read_prompt_file(tmp_path / "sub" / "r.jsonl")
    assert [i.prompt for i in read_prompt_file(tmp_path / "sub" / "r.jsonl", prompts_only=True)] == ["a"]
