"""The evaluation harness (eval/harness.py, cache.py, prompts.py, report.py): scoring folders with a test
double embedder, caching, bad input, prompt files, generate-then-score with a tiny random LDM pipeline
(seeded, resumable), the report files and the CLI."""

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from eval_helpers import SR, BandEmbedder, clip, write_corpus
from ldm_helpers import tiny_pipeline
from soundsmith.codecs.audio import read_audio, resample, write_audio
from soundsmith.core.weights import weights_fingerprint
from soundsmith.eval.fad import Statistics, fad
from soundsmith.eval.harness import clip_name, run_eval, score_folders
from soundsmith.eval.labels import LabelTrainConfig, train_label_classifier
from soundsmith.gen.text_encoder import SentenceEncoder
from soundsmith.pipelines.prompts import read_prompt_file


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@pytest.fixture(scope="module")
def pipe(encoder):
    return tiny_pipeline(encoder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("harness") / "corpus")


@pytest.fixture(scope="module")
def labeler(pipe, corpus, tmp_path_factory):
    """A label classifier trained on the tiny corpus with the tiny pipeline's CLAP."""
    out = tmp_path_factory.mktemp("labels") / "labels"
    return train_label_classifier(corpus, out, clap=pipe.conditioner.model, cache_dir=tmp_path_factory.mktemp("c"),
                                  config=LabelTrainConfig(hidden=32, epochs=60, lr=1e-2), progress=False)


def make_sets(root, n=12, noise=0.0, seconds=1.0):
    """reference/ with n clips; generated/ with the same clips plus noise, each with a JSON sidecar."""
    ref, gen = root / "reference", root / "generated"
    ref.mkdir(parents=True)
    gen.mkdir(parents=True)
    kinds = [("sfx", "siren"), ("music", "piano"), ("speech", "de")]
    rng = np.random.default_rng(0)
    for i in range(n):
        domain, label = kinds[i % 3]
        wave = clip(domain, label, i, seconds=seconds)
        write_audio(ref / f"{i:03d}.wav", wave, SR)
        noisy = np.clip(wave + noise * rng.standard_normal(wave.shape), -1, 1).astype(np.float32)
        write_audio(gen / f"g{i:03d}.wav", noisy, SR,
                    metadata={"prompt": f"{label} sound", "prompt_index": i % 4, "reference": str(ref / f"{i:03d}.wav"),
                              "labels": {"domain": [domain]}, "model": "test-model"})
    return gen, ref


def metric(results, name):
    values = [m["value"] for m in results["metrics"] if m["metric"] == name]
    assert values, (name, results["not_computed"])
    return values[0]


# ------------------------------------------------------------------------------------------ score


def test_score_folders_fad_kl_is(tmp_path):
    gen, ref = make_sets(tmp_path, noise=0.01)
    emb = BandEmbedder()
    emb.logits = None  # not called: one embed_and_logits pass per clip gives both
    r = score_folders(gen, ref, metrics=["fad", "kl", "is"], embedding=emb, cache_dir=tmp_path / "cache",
                      out=tmp_path / "out", progress=False)
    assert r["model"] == "test-model" and r["clips"]["generated"] == 12 and r["clips"]["reference"] == 12
    # FAD equals the formula on all windows of all clips
    windows = lambda folder: np.concatenate([emb.embed(*read_audio(p)) for p in sorted(folder.glob("*.wav"))])  # noqa: E731
    expected = fad(Statistics.from_embeddings(windows(gen)), Statistics.from_embeddings(windows(ref)))
    assert metric(r, "fad") == pytest.approx(expected, rel=1e-6)
    assert metric(r, "fad_inf_r2") <= 1.0 and "fad_inf" in r
    assert all(isinstance(c["fad"], float) for c in r["per_clip"])
    assert metric(r, "kl_softmax_ref_gen") >= -1e-6 and metric(r, "kl_softmax_gen_ref") >= -1e-6
    # audioldm_eval's sigmoid "KL" lacks the (1 - p) terms: not a divergence, it may be negative
    assert math.isfinite(metric(r, "kl_sigmoid_ref_gen")) and math.isfinite(metric(r, "kl_sigmoid_gen_ref"))
    assert metric(r, "inception_score") >= 1.0
    assert r["classifier"]["source"] == "embedder" and r["embedding"]["name"] == "test-bands"

    # the report files: one CSV row per metric, no NaN anywhere, a self-contained HTML
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [row["metric"] for row in rows] == [m["metric"] for m in r["metrics"]]
    assert set(rows[0]) == {"metric", "value", "model", "embedding", "n", "time_s", "note"}
    assert all(math.isfinite(float(row["value"])) for row in rows)
    assert rows[0]["embedding"] == "test-bands" and rows[0]["model"] == "test-model"
    assert "NaN" not in (tmp_path / "out" / "results.json").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "<table>" in html  # FAD-inf plot + worst-clip mels
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| fad |" in md and "plots/worst_1.png" in md and (tmp_path / "out" / "plots" / "worst_1.png").is_file()


def test_fad_rises_with_noise(tmp_path):
    values = []
    for k, noise in enumerate((0.0, 0.01, 0.05, 0.2)):
        gen, ref = make_sets(tmp_path / str(k), noise=noise)
        r = score_folders(gen, ref, metrics=["fad"], embedding=BandEmbedder(), cache_dir="", progress=False)
        values.append(metric(r, "fad"))
    assert values[0] == pytest.approx(0.0, abs=1e-2)
    assert values == sorted(values) and values[-1] > 10 * values[1]


def test_cache_hits_and_a_changed_file_is_recomputed(tmp_path, monkeypatch):
    gen, ref = make_sets(tmp_path, noise=0.01)
    calls = []
    emb = BandEmbedder()
    original = emb.embed

    def counting(wave, sr):
        calls.append(1)
        return original(wave, sr)

    monkeypatch.setattr(emb, "embed", counting)
    kwargs = dict(metrics=["fad"], embedding=emb, cache_dir=tmp_path / "cache", progress=False)
    first = score_folders(gen, ref, **kwargs)
    assert len(calls) == 24
    again = score_folders(gen, ref, **kwargs)
    assert len(calls) == 24 and metric(again, "fad") == metric(first, "fad")  # everything from the cache
    write_audio(gen / "g000.wav", clip("sfx", "dog barking", 99, seconds=1.0), SR)  # a changed file
    changed = score_folders(gen, ref, **kwargs)
    assert len(calls) == 25 and metric(changed, "fad") != metric(first, "fad")
    assert len(list((tmp_path / "cache").glob("emb-*/stats/*.npz"))) == 3  # ref, gen, changed gen
    other = score_folders(gen, ref, **{**kwargs, "embedding": BandEmbedder(offset=1.0)})  # another model: new key
    assert len(calls) == 25 + 0 and metric(other, "fad") == pytest.approx(metric(changed, "fad"), rel=1e-5)
    assert len(list((tmp_path / "cache").glob("emb-*"))) == 2


def test_bad_input(tmp_path):
    gen, ref = make_sets(tmp_path, n=3, noise=0.01, seconds=0.3)  # 3 windows of 0.1 s per clip
    (tmp_path / "empty").mkdir()
    kwargs = dict(embedding=BandEmbedder(), cache_dir="", progress=False)
    with pytest.raises(ValueError, match="generated folder .*empty has no audio files"):
        score_folders(tmp_path / "empty", ref, metrics=["fad"], **kwargs)
    with pytest.raises(FileNotFoundError, match="reference folder not found"):
        score_folders(gen, tmp_path / "nope", metrics=["fad"], **kwargs)
    with pytest.raises(ValueError, match="metrics must be a non-empty subset of fad,clap,kl,is,labels"):
        score_folders(gen, ref, metrics=["fid"], **kwargs)
    with pytest.raises(ValueError, match="metrics fad need reference audio"):
        score_folders(gen, None, metrics=["fad"], **kwargs)
    # too few windows for a full covariance of 8-d embeddings: says what n is needed and the options
    for p in list(gen.glob("g00[12].*")):
        p.unlink()
    with pytest.raises(ValueError, match=r"generated set \(1 clips\): 3 embedding windows, but a full covariance of "
                                         r"8-d embeddings needs at least 9; .*--covariance diagonal"):
        score_folders(gen, ref, metrics=["fad"], **kwargs)
    r = score_folders(gen, ref, metrics=["fad", "is"], covariance="shrinkage", **kwargs)
    assert math.isfinite(metric(r, "fad"))
    assert [m["metric"] for m in r["not_computed"]] == ["inception_score"]  # too few clips: said why
    assert "needs at least 10 generated clips" in str(r["not_computed"])


def test_silent_nan_and_resampled_clips(tmp_path, caplog):
    gen, ref = make_sets(tmp_path, noise=0.01)
    write_audio(gen / "silent.wav", np.zeros((1, SR), np.float32), SR)
    bad = np.full((SR, 1), 0.1, np.float32)
    bad[100] = np.nan
    sf.write(str(gen / "nan.wav"), bad, SR, subtype="FLOAT")
    wave, _ = read_audio(gen / "g003.wav")
    write_audio(gen / "g003.wav", resample(wave, SR, 22050), 22050, metadata=json.loads((gen / "g003.json").read_text()))
    r = score_folders(gen, ref, metrics=["fad", "kl"], embedding=BandEmbedder(), cache_dir="", progress=False)
    reasons = {os.path.basename(s["file"]): s["reason"] for s in r["skipped_clips"]}
    assert reasons["silent.wav"].startswith("silent") and "NaN" in reasons["nan.wav"]
    assert r["clips"] == {"generated": 12, "reference": 12, "generated_skipped": 2, "reference_skipped": 0}
    assert any("sample rates differ (generated 16000/22050 Hz, reference 16000 Hz)" in w for w in r["warnings"])
    assert any("silent.wav skipped" in w for w in r["warnings"])
    assert all(math.isfinite(m["value"]) for m in r["metrics"])
    for p in gen.glob("g*.wav"):
        write_audio(p, np.zeros((1, 100), np.float32), SR)
    (gen / "nan.wav").unlink()
    with pytest.raises(ValueError, match="no usable generated clips: all 13 are silent or unreadable"):
        score_folders(gen, ref, metrics=["fad"], embedding=BandEmbedder(), cache_dir="", progress=False)


def test_clap_score_and_label_metrics(tmp_path, pipe, corpus, labeler):
    # "generated" = corpus test clips with sidecars: the classifier should agree with their labels
    gen = tmp_path / "gen"
    gen.mkdir()
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r["split"] == "test"]
    from soundsmith.pipelines.prompts import labels_of

    for i, row in enumerate(tests):
        shutil.copy(corpus / row["file_name"], gen / f"{i:02d}.wav")
        (gen / f"{i:02d}.json").write_text(json.dumps({"prompt": row["caption"], "prompt_index": i // 2,
                                                       "labels": labels_of(row)}))
    clap = pipe.conditioner.model
    no_head = BandEmbedder()
    no_head.n_classes = 0  # KL and IS then use the label classifier's heads
    r = score_folders(gen, None, metrics=["clap", "labels", "is"], embedding=no_head, clap_model=clap,
                      labels_model=labeler, cache_dir=tmp_path / "cache", progress=False,
                      conditioning_clap=weights_fingerprint(clap))
    assert r["clap_model"]["independent"] is False and "same CLAP that conditioned" in r["clap_model"]["note"]
    assert len(r["per_prompt"]) == 6 and all(p["clips"] == 2 for p in r["per_prompt"])
    texts = [json.loads((gen / f"{i:02d}.json").read_text())["prompt"] for i in range(len(tests))]
    audio = clap.embed_audio(np.stack([read_audio(gen / f"{i:02d}.wav")[0] for i in range(len(tests))]), SR)
    expected = (audio * clap.embed_text(texts)).sum(-1).mean().item()
    assert metric(r, "clap_score") == pytest.approx(expected, abs=1e-4)
    # label accuracy = the classifier's own predictions clip by clip against the sidecar labels
    from soundsmith.eval.metrics import label_accuracy

    predicted = [labeler.predict(*read_audio(gen / f"{i:02d}.wav")) for i in range(len(tests))]
    truth = [{k: v for k, v in labels_of(row).items() if k in labeler.classes} for row in tests]  # no "mode" head
    expected = label_accuracy(predicted, truth)
    assert metric(r, "label_accuracy") == pytest.approx(expected["all"]["accuracy"])
    assert expected["all"]["accuracy"] >= 0.75
    assert r["label_accuracy"]["sfx_class"] == expected["sfx_class"]
    assert r["per_clip"][0]["predicted"]["domain"] == "sfx"
    assert r["classifier"]["source"] == "label classifier" and metric(r, "inception_score") > 1.0
    # wrong labels are counted wrong
    for i in range(len(tests)):
        meta = json.loads((gen / f"{i:02d}.json").read_text())
        meta["labels"] = {"sfx_class": ["thunder"]}
        (gen / f"{i:02d}.json").write_text(json.dumps(meta))
    r = score_folders(gen, None, metrics=["labels"], labels_model=labeler, cache_dir=tmp_path / "cache", progress=False)
    assert metric(r, "label_accuracy") == 0.0
    # no sidecars: the CLAP score and label accuracy say why they are missing
    for p in gen.glob("*.json"):
        p.unlink()
    r = score_folders(gen, None, metrics=["clap", "labels"], clap_model=clap, labels_model=labeler, cache_dir="",
                      progress=False)
    assert {m["metric"] for m in r["not_computed"]} == {"clap_score", "label_accuracy"} and not r["metrics"]


# ---------------------------------------------------------------------------------------- prompts


def test_prompt_files(tmp_path, corpus):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "rain", "domain": "sfx", "label": "rain"}) + "\n\n"
                     + json.dumps({"caption": "a piano", "file_name": "test/0030.wav",
                                   "labels": {"domain": "music", "instruments": ["piano"], "tempo_bpm": 70.0}}) + "\n")
    items = read_prompt_file(jsonl, reference_dir=corpus)
    assert [i.prompt for i in items] == ["rain", "a piano"]
    assert items[0].labels == {"sfx_class": ["rain"]} and items[0].reference is None
    assert items[1].reference == corpus / "test" / "0030.wav"
    assert items[1].labels == {"instrument": ["piano"], "tempo": ["slow"]}
    # MusicCaps-style CSV: ytid matched against the reference folder's file names
    refs = tmp_path / "refs"
    refs.mkdir()
    write_audio(refs / "abc123_30.wav", clip("sfx", "siren", 0), SR)
    (tmp_path / "mc.csv").write_text('ytid,start_s,caption\nabc123,30,"a siren, loud"\nzzz,0,dog\n')
    items = read_prompt_file(tmp_path / "mc.csv", reference_dir=refs)
    assert items[0].prompt == "a siren, loud" and items[0].reference == refs / "abc123_30.wav"
    assert items[1].reference is None
    # AudioCaps-style with a file column; a custom caption column
    (tmp_path / "ac.csv").write_text("audiocap_id,file_name,my_text\n1,x.wav,birds\n")
    assert read_prompt_file(tmp_path / "ac.csv", caption_column="my_text")[0].reference == tmp_path / "x.wav"
    with pytest.raises(ValueError, match=r"ac.csv: no caption column \(looked for caption, prompt, text, "
                                         r"description; found audiocap_id, file_name, my_text\)"):
        read_prompt_file(tmp_path / "ac.csv")
    (tmp_path / "e.csv").write_text("caption,x\n,1\n")
    with pytest.raises(ValueError, match=r"e.csv:2: the 'caption' column is empty"):
        read_prompt_file(tmp_path / "e.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"label": "rain"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no caption field"):
        read_prompt_file(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="must be .jsonl or .csv"):
        (tmp_path / "p.txt").write_text("rain\n")
        read_prompt_file(tmp_path / "p.txt")
    with pytest.raises(FileNotFoundError, match="prompts file not found"):
        read_prompt_file(tmp_path / "missing.jsonl")


def test_the_committed_prompt_sets_parse():
    root = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "prompts")
    adherence = read_prompt_file(os.path.join(root, "adherence.jsonl"))
    assert len(adherence) >= 57 and all(len(i.labels) == 1 for i in adherence)
    tune = read_prompt_file(os.path.join(root, "adherence-tune.jsonl"))  # settings are chosen here, not on adherence
    assert len(tune) == len(adherence) and not {i.prompt for i in tune} & {i.prompt for i in adherence}
    assert sorted(map(str, (i.labels for i in tune))) == sorted(map(str, (i.labels for i in adherence)))
    test200 = read_prompt_file(os.path.join(root, "corpus-test-200.jsonl"), reference_dir="data/corpus")
    assert len(test200) == 200 and all(i.reference is not None and i.labels for i in test200)


# ---------------------------------------------------------------------------------------- run_eval


def write_prompts(path, corpus, n=4):
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r["split"] == "test"][:n]
    path.write_text("".join(json.dumps({"prompt": r["caption"], "file_name": r["file_name"], "labels": r["labels"]})
                            + "\n" for r in tests))
    return path


def test_run_eval_generates_scores_and_resumes(tmp_path, pipe, corpus, labeler):
    prompts = write_prompts(tmp_path / "p.jsonl", corpus)
    out = tmp_path / "eval"
    kwargs = dict(num_per_prompt=2, seed=10, batch_size=3, pipeline_kwargs={"duration_s": 0.5},
                  metrics=["fad", "clap", "labels"], embedding=BandEmbedder(), covariance="diagonal",
                  clap_model=pipe.conditioner.model, labels_model=labeler, cache_dir=tmp_path / "cache",
                  progress=False, pipeline=pipe)
    r = run_eval("tiny-model", prompts, corpus, out, **kwargs)
    files = sorted((out / "generated").glob("*.wav"))
    assert [f.name for f in files][:2] == [clip_name(0, 0, r["per_clip"][0]["prompt"]),
                                           clip_name(0, 1, r["per_clip"][0]["prompt"])]
    assert len(files) == 8 and r["generation"]["generated_now"] == 8
    meta = json.loads(files[3].with_suffix(".json").read_text())
    assert meta["seed"] == 10 + 1 * 2 + 1 and meta["prompt_index"] == 1 and meta["k"] == 1
    assert meta["reference"] == str((corpus / "test" / "0037.wav").resolve()) and meta["labels"]["sfx_class"] == ["siren"]
    assert r["clips"]["reference"] == 4  # the prompts' referenced clips, not the whole corpus
    assert r["clap_model"]["independent"] is False  # our CLAP scored what it conditioned, and the report says so
    for name in ("fad", "clap_score", "label_accuracy"):
        assert math.isfinite(metric(r, name))
    for name in ("results.json", "results.csv", "report.md", "report.html", "eval_config.json"):
        assert (out / name).is_file()

    # a rerun skips what is there; a deleted clip comes back the same (seeded per clip)
    before = read_audio(files[5])[0]
    files[5].unlink()
    again = run_eval("tiny-model", prompts, corpus, out, **kwargs)
    assert again["generation"]["generated_now"] == 1
    np.testing.assert_allclose(read_audio(files[5])[0], before, atol=1e-3)
    assert metric(again, "fad") == pytest.approx(metric(r, "fad"), abs=1e-3)
    with pytest.raises(ValueError, match="holds clips generated with other settings \\(seed: 10 now 11\\)"):
        run_eval("tiny-model", prompts, corpus, out, **{**kwargs, "seed": 11})


def test_run_eval_reports_progress_and_stops_when_asked(tmp_path, pipe, corpus):
    from soundsmith.pipelines.base import GenerationCancelled

    prompts = write_prompts(tmp_path / "p.jsonl", corpus)
    kwargs = dict(num_per_prompt=2, batch_size=3, pipeline_kwargs={"duration_s": 0.3}, metrics=["clap"],
                  clap_model=pipe.conditioner.model, cache_dir=tmp_path / "cache", progress=False, pipeline=pipe)
    seen = []
    with pytest.raises(GenerationCancelled, match="stopped after 3 of 8 clips"):
        run_eval("m", prompts, corpus, tmp_path / "out",
                 callback=lambda done, total: seen.append((done, total)) or False, **kwargs)
    assert seen == [(3, 8)] and len(list((tmp_path / "out" / "generated").glob("*.wav"))) == 3  # kept
    seen.clear()
    r = run_eval("m", prompts, corpus, tmp_path / "out", callback=lambda done, total: seen.append((done, total)),
                 **kwargs)
    assert seen == [(3, 5), (5, 5)] and r["generation"]["generated_now"] == 5  # resumed from the 3 kept


def test_run_eval_bad_input_fails_before_generating(tmp_path, pipe, corpus):
    (tmp_path / "p.csv").write_text("id,words\n1,rain\n")
    with pytest.raises(ValueError, match="no caption column"):
        run_eval("m", tmp_path / "p.csv", corpus, tmp_path / "out", pipeline=pipe)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "rain", "file_name": "test/9999.wav"}) + "\n")
    with pytest.raises(FileNotFoundError, match="1 of 1 reference clips named in the prompt file are missing"):
        run_eval("m", tmp_path / "p.jsonl", corpus, tmp_path / "out", pipeline=pipe)
    (tmp_path / "q.jsonl").write_text(json.dumps({"prompt": "rain"}) + "\n")
    with pytest.raises(ValueError, match="metrics fad and kl need reference audio"):
        run_eval("m", tmp_path / "q.jsonl", None, tmp_path / "out", pipeline=pipe)
    with pytest.raises(ValueError, match=r"num_per_prompt must be an integer in \[1, 64\]"):
        run_eval("m", tmp_path / "q.jsonl", None, tmp_path / "out", pipeline=pipe, num_per_prompt=0)
    assert not (tmp_path / "out" / "generated").exists() or not any((tmp_path / "out" / "generated").iterdir())


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_score_and_run(tmp_path, pipe, corpus, monkeypatch, capsys):
    from soundsmith.eval import harness

    from soundsmith.cli import main

    monkeypatch.setattr(harness, "_get_embedder", lambda name, checkpoint, device: BandEmbedder())
    gen, ref = make_sets(tmp_path / "sets", noise=0.01)
    assert main(["eval", "score", "--generated", str(gen), "--reference", str(ref), "--metrics", "fad,kl",
                 "--out", str(tmp_path / "score"), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "fad " in out and "kl_softmax_ref_gen" in out and "report.html" in out
    assert (tmp_path / "score" / "results.csv").is_file()

    folder = pipe.save_pretrained(tmp_path / "model")
    prompts = write_prompts(tmp_path / "p.jsonl", corpus, n=2)
    assert main(["eval", "run", "--model", str(folder), "--prompts", str(prompts), "--reference", str(corpus),
                 "--out", str(tmp_path / "run"), "--metrics", "fad", "--covariance", "diagonal", "--duration", "0.5",
                 "--steps", "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "fad" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "eval_config.json").read_text())
    assert config["pipeline"] == {"duration_s": 0.5, "num_inference_steps": 2}
    assert len(list((tmp_path / "run" / "generated").glob("*.wav"))) == 2

    (tmp_path / "bad.csv").write_text("id\n1\n")
    assert main(["eval", "run", "--model", str(folder), "--prompts", str(tmp_path / "bad.csv"),
                 "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv: no caption column" in err[0]
    assert main(["eval", "score", "--generated", str(tmp_path / "nothing"), "--reference", str(ref)]) == 2
    assert "generated folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_share_the_generation(tmp_path, pipe, corpus):
    """`accelerate launch` with 2 CPU processes: each generates its share, the main process scores once."""
    import subprocess
    import sys

    from test_multiprocess import _free_port

    folder = pipe.save_pretrained(tmp_path / "model")
    pipe.conditioner.model.save_pretrained(tmp_path / "clap")
    prompts = write_prompts(tmp_path / "p.jsonl", corpus, n=4)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "soundsmith.cli", "eval", "run", "--model", str(folder), "--prompts", str(prompts), "--reference",
           str(corpus), "--out", str(tmp_path / "run"), "--metrics", "fad,clap", "--embedding-checkpoint",
           str(tmp_path / "clap"), "--clap-model", str(tmp_path / "clap"), "--covariance", "diagonal",
           "--duration", "0.5", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "run" / "generated").glob("*.json")]
    assert sorted(m["prompt_index"] for m in metas) == [0, 1, 2, 3]
    assert {m["process_index"] for m in metas} == {0, 1}
    assert done.stdout.count("report:") == 1
