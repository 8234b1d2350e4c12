"""`soundsmith generate --prompts-file`: clips written call by call, Ctrl-C keeps them, a rerun resumes (the
manifest), other arguments are refused; `--threads`. On a tiny random LDM folder (200 prompts in seconds)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
from ldm_helpers import tiny_pipeline
from soundsmith.core.runtime import default_threads
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines import batch as batch_mod
from soundsmith.pipelines import ldm

from soundsmith.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_PROMPTS = 200
PER_CALL = 4  # --batch-size: clips per pipeline call, so the interrupt lands after 5 calls = 20 clips


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_pipeline(SentenceEncoder()).save_pretrained(tmp_path_factory.mktemp("ldm") / "model")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("".join(f"sound number {i}\n" for i in range(N_PROMPTS)))
    return path


@pytest.fixture
def calls(monkeypatch):
    """Every LDMPipeline call's prompts; `calls.stop_at = k` raises KeyboardInterrupt (Ctrl-C) at call k."""
    seen: list[list[str]] = []
    real = ldm.LDMPipeline.__call__

    def spy(self, prompt, **kwargs):
        seen.append(list(prompt))
        if getattr(spy, "stop_at", None) == len(seen):
            raise KeyboardInterrupt
        if getattr(spy, "check_streaming", None) is not None:
            spy.check_streaming(len(seen))
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(ldm.LDMPipeline, "__call__", spy)
    spy.seen = seen
    return spy


def base_args(folder, prompts_file, out) -> list[str]:
    return ["generate", "--prompts-file", str(prompts_file), "--model", str(folder), "--duration", "0.2",
            "--steps", "1", "--device", "cpu", "--batch-size", str(PER_CALL), "--out", str(out)]


def wavs(out) -> list[str]:
    return sorted(p.name for p in out.glob("*.wav"))


def audio(path) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def test_interrupted_batch_keeps_its_clips_and_resumes(folder, prompts_file, tmp_path, calls, capsys):
    out = tmp_path / "out"

    def streaming(k: int) -> None:  # when call k starts, the clips of the k-1 calls before it are on disk
        on_disk = len(wavs(out)) if out.exists() else 0
        assert on_disk == (k - 1) * PER_CALL, f"call {k} found {on_disk} clips on disk"

    calls.check_streaming = streaming
    calls.stop_at = 6
    assert main(base_args(folder, prompts_file, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"soundsmith: interrupted: 20 of {N_PROMPTS} clips are in {out}; "
                                               "resume with: soundsmith generate "), err
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    assert len(kept) == 20 and all((out / name).with_suffix(".json").is_file() for name in kept)
    assert not list(out.glob(".*"))  # no temporary files left
    manifest = [json.loads(line) for line in (out / batch_mod.MANIFEST_NAME).read_text().splitlines()]
    seed = manifest[0]["arguments"]["seed"]  # no --seed given: drawn once, kept in the manifest
    assert [m["index"] for m in manifest[1:]] == list(range(20))

    # the printed command resumes: only the 180 missing prompts are generated, the 20 clips are not touched
    calls.seen.clear()
    calls.stop_at = calls.check_streaming = None
    resume = shlex.split(err[0].split("resume with: ", 1)[1])
    assert resume[-2:] == ["--seed", str(seed)]
    assert main(resume[1:]) == 0
    captured = capsys.readouterr()
    assert f"resuming: 20 of {N_PROMPTS} clips are already in {out}" in captured.err
    assert sum(len(c) for c in calls.seen) == N_PROMPTS - 20 and max(len(c) for c in calls.seen) == PER_CALL
    assert len(captured.out.split()) == N_PROMPTS - 20  # each new clip's path, none of the kept ones
    names = wavs(out)
    assert len(names) == N_PROMPTS and not any(n.endswith("-2.wav") for n in names)
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert names == sorted(f"sound-number-{i}-{seed + i}.wav" for i in range(N_PROMPTS))  # output i: seed + i
    meta = json.loads((out / f"sound-number-150-{seed + 150}.json").read_text())
    assert meta["index"] == 150 and meta["seed"] == seed + 150 and meta["prompt"] == "sound number 150"

    # the same audio as an uninterrupted run, for clips from before and after the interrupt
    ref = tmp_path / "ref"
    assert main([*base_args(folder, prompts_file, ref), "--seed", str(seed)]) == 0
    for i in (3, 19, 20, 150, N_PROMPTS - 1):
        name = f"sound-number-{i}-{seed + i}.wav"
        assert np.array_equal(audio(out / name), audio(ref / name)), name

    # a rerun of a finished batch generates nothing; the original command (no --seed) finds the drawn seed
    calls.seen.clear()
    capsys.readouterr()
    assert main(base_args(folder, prompts_file, out)) == 0
    assert calls.seen == [] and capsys.readouterr().out == ""


@pytest.mark.parametrize("extra, difference", [
    (["--steps", "2"], "steps: 1 now 2"),
    (["--seed", "1", "--num", "2"], "num: 1 now 2"),
    (["--no-watermark"], "watermark: True now False"),
])
def test_other_arguments_into_the_folder_are_refused(folder, tmp_path, calls, capsys, extra, difference):
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\nwind\nthunder\n")
    out = tmp_path / "out"
    args = [*base_args(folder, prompts, out), "--seed", "1"]
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls.seen.clear()
    capsys.readouterr()
    code = main([*args, *extra])  # the later value of an option wins
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"soundsmith: error: {out} holds clips generated with other settings ({difference}); use a new "
                      "--out folder or the same settings")
    assert calls.seen == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_another_model_into_the_folder_is_refused(folder, tmp_path, calls, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    out = tmp_path / "out"
    assert main(base_args(folder, prompts, out)) == 0
    other = tiny_pipeline(SentenceEncoder(), seed=1).save_pretrained(tmp_path / "other")
    calls.seen.clear()
    capsys.readouterr()
    assert main(base_args(other, prompts, out)) == 2
    err = capsys.readouterr().err
    assert "holds clips generated with other settings (model_fingerprint: " in err and calls.seen == []
    moved = tmp_path / "moved"
    folder_copy = shutil.copytree(folder, moved)  # the same weights elsewhere: resumes, nothing to do
    assert main(base_args(folder_copy, prompts, out)) == 0 and calls.seen == []


def test_a_file_target_streams_numbered_clips(folder, tmp_path, calls, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\nwind\nthunder\n")
    args = base_args(folder, prompts, tmp_path / "take.wav")
    args[args.index("--batch-size") + 1] = "1"
    assert main([*args, "--seed", "7"]) == 0
    assert [len(c) for c in calls.seen] == [1, 1, 1]
    assert sorted(p.name for p in tmp_path.glob("take*.wav")) == ["take-2.wav", "take-3.wav", "take.wav"]
    for i, name in enumerate(["take", "take-2", "take-3"]):
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert (meta["index"], meta["seed"]) == (i, 7 + i)
    assert not (tmp_path / batch_mod.MANIFEST_NAME).exists()  # a file target does not resume


def test_positional_prompts_stream_without_a_manifest(folder, tmp_path, calls, capsys):
    out = tmp_path / "out"
    args = ["generate", "a", "b", "c", "--model", str(folder), "--duration", "0.2", "--steps", "1", "--device", "cpu",
            "--batch-size", "2", "--seed", "3", "--num", "2", "--out", str(out)]
    assert main(args) == 0
    assert calls.seen == [["a"], ["b"], ["c"]]  # whole prompts per call: 2 clips each
    assert wavs(out) == ["a-3.wav", "a-4.wav", "b-5.wav", "b-6.wav", "c-7.wav", "c-8.wav"]
    assert not (out / batch_mod.MANIFEST_NAME).exists()
    assert main(args) == 0  # no manifest: a rerun makes new clips beside the old ones, as before
    assert len(wavs(out)) == 12


def test_ctrl_c_while_clips_are_written_waits_for_them():
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with batch_mod._sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True  # reached: the interrupt waits for the block's end
    assert finished
    assert signal.getsignal(signal.SIGINT) is handler


def test_missing_runs_split_a_call_around_done_prompts():
    assert list(batch_mod._missing_runs(range(4, 10), {5, 6, 9})) == [[4], [7, 8]]
    assert list(batch_mod._missing_runs(range(0, 3), {0, 1, 2})) == []
    assert batch_mod.batch_seeds(5, 8, 3) == [13, 14, 15]
    assert batch_mod.check_batch_seed(2**63 - 3, 3) == 2**63 - 3
    with pytest.raises(ValueError, match=r"seed 9223372036854775806 is too large for 3 outputs"):
        batch_mod.check_batch_seed(2**63 - 2, 3)  # no wrap to seed 0, which would repeat its clips


# -------------------------------------------------------------------------------------------- threads


def test_threads_option_sets_torch_threads(folder, tmp_path, calls, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert main(["generate", "rain", "--model", str(folder), "--duration", "0.2", "--steps", "1", "--device",
                     "cpu", "--threads", "1", "--out", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    from soundsmith.cli import build_parser

    for command in (["generate", "x"], ["eval", "run", "--prompts", "p", "--out", "o"],
                    ["train", "vae", "--data", "d", "--out", "o"]):
        assert build_parser().parse_args([*command, "--threads", "3"]).threads == 3
        assert build_parser().parse_args(command).threads is None  # the default: default_threads()


def test_bad_threads_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["generate", "rain", "--threads", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "argument --threads: must be in [1, 4096], got 0" in err[0]


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3  # the user's environment wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    cpus = len(os.sched_getaffinity(0))
    assert default_threads() in (cpus, max(1, cpus // 2))  # halved where Linux reports SMT


def test_a_seed_too_large_for_the_batch_is_refused_before_loading(tmp_path, capsys):
    code = main(["generate", "a", "b", "--seed", str(2**63 - 1), "--model", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "seed 9223372036854775807 is too large for 2 outputs" in err[0]
