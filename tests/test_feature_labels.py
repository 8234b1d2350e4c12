"""The second label classifier (eval/feature_labels.py): hand-crafted features, training on a tiny labelled
corpus (tones, tone pulses, shaped noise), the pickle-free folder round trip, bad folders, the CLI, the
harness reporting both classifiers and where they disagree, and benchmarks/adherence.py's scoring."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import CLASSES, SR, clip, write_corpus
from soundsmith.codecs.audio import resample, write_audio
from soundsmith.eval.feature_labels import (
    FEATURE_VERSION,
    FeatureLabelClassifier,
    FeatureTrainConfig,
    HandcraftedFeatures,
    dct_matrix,
    disagreement,
    family_ranks,
    family_top_k,
    format_feature_label_report,
    load_feature_label_classifier,
    train_feature_label_classifier,
)
from soundsmith.eval.labels import DOMAIN_FAMILIES

FAST = FeatureTrainConfig(c_grid=(1.0,))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("feature-labels") / "corpus")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("feature-labels") / "model"
    cache = tmp_path_factory.mktemp("cache")
    return train_feature_label_classifier(corpus, out, cache_dir=cache, config=FAST, progress=False), out, cache


def test_features_shape_and_input_handling():
    feats = HandcraftedFeatures()
    assert feats.dim == len(feats.names) == 3 * 64 + 3 * 20 + 8 + 5 + 4 + 48
    waves = [clip("sfx", "siren", 0), clip("music", "piano", 1, seconds=1.0), clip("speech", "de", 2)[0]]
    x = feats(waves, SR)
    assert x.shape == (3, feats.dim) and x.dtype == np.float32 and np.isfinite(x).all()
    # stereo of the same signal = mono; a torch tensor = numpy; 44.1 kHz input is resampled to 16 kHz
    np.testing.assert_allclose(feats([np.repeat(waves[0], 2, 0)], SR), x[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats([torch.from_numpy(waves[0])], SR), x[:1], rtol=1e-5, atol=1e-5)
    x44 = feats([resample(waves[0], SR, 44100)], 44100)[0]
    centroid = feats.names.index("centroid_khz_mean")
    assert abs(x44[centroid] - x[0, centroid]) < 0.05
    # tones are flat-spectrum-poor, noise is flat; silence and a very short clip stay finite
    flat = feats.names.index("log_flatness_mean")
    assert x[0, flat] < x[2, flat] - 2
    odd = feats([np.zeros((1, SR), np.float32), np.full((1, 100), 0.1, np.float32)], SR)
    assert np.isfinite(odd).all()
    # the DCT is orthonormal: the MFCCs keep the log-mel's energy
    dct = dct_matrix(64, 64)
    np.testing.assert_allclose(dct @ dct.T, np.eye(64), atol=1e-5)


def test_training_learns_the_tiny_corpus(trained):
    clf, _, _ = trained
    report = clf.report
    assert report["clips"] == {"train": 24, "valid": 12, "test": 12}
    acc = report["test_accuracy"]
    for family in ("domain", "sfx_class", "instrument", "language"):
        assert acc[family]["accuracy"] == 1.0, (family, acc)
    assert acc["sfx_class"]["classes"] == 20 and acc["instrument"]["classes"] == 15  # the full vocabularies
    assert report["test_accuracy_gated"]["all"]["accuracy"] >= 0.9
    assert report["c_chosen"] == {f: 1.0 for f in clf.classes}
    text = format_feature_label_report(report)
    assert "sfx_class" in text and "top-3" in text


def test_predict_ranks_and_top_k(trained):
    clf, _, _ = trained
    for k, (domain, label) in enumerate(CLASSES):
        pred = clf.predict(clip(domain, label, 1000 + k), SR)
        assert pred["domain"] == domain and set(pred) == {"domain", *DOMAIN_FAMILIES[domain]}
        assert pred[DOMAIN_FAMILIES[domain][0]] == label
    assert clf.logits(clip("sfx", "siren", 5), SR).shape == (1, len(clf.class_names())) == (1, 3 + 20 + 15 + 6 + 3)
    x = clf.features([clip("sfx", "siren", 5), clip("sfx", "dog barking", 6)], SR)
    assert family_ranks(clf, x, "sfx_class", ["siren", "dog barking"]) == [1, 1]
    assert family_ranks(clf, x, "sfx_class", ["dog barking", "siren"]) == [2, 2]  # the other one seen in training
    assert [top[0] for top in family_top_k(clf, x, "sfx_class", 3)] == ["siren", "dog barking"]
    with pytest.raises(ValueError, match="'kazoo' not among the classifier's classes"):
        family_ranks(clf, x, "sfx_class", ["kazoo", "siren"])


def test_folder_round_trip_without_pickle(trained):
    clf, folder, _ = trained
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(files) == {"config.json", "model.safetensors"} and sum(files.values()) < 1e6
    for path in folder.iterdir():  # no pickle anywhere: JSON text and a safetensors header
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and b"PK" != head
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "soundsmith-feature-labels" and config["features"]["version"] == FEATURE_VERSION
    assert len(config["scaler"]["mean"]) == len(config["features"]["names"]) == clf.features.dim
    assert config["report"]["test_accuracy"]["domain"]["accuracy"] == 1.0
    from safetensors.numpy import load_file

    assert sorted(load_file(str(folder / "model.safetensors"))) == sorted(
        f"{f}.{p}" for f in clf.classes for p in ("weight", "bias"))
    loaded = load_feature_label_classifier(folder)
    waves = [clip(domain, label, 500 + k) for k, (domain, label) in enumerate(CLASSES)]
    x = clf.features(waves, SR)
    assert loaded.predict_features(x) == clf.predict_features(x)
    np.testing.assert_allclose(loaded.logits_from_features(x), clf.logits_from_features(x), rtol=1e-5, atol=1e-4)


def test_bad_folders(trained, tmp_path):
    _, folder, _ = trained
    with pytest.raises(FileNotFoundError, match="feature label classifier not found: .* train-feature-labels"):
        load_feature_label_classifier(tmp_path / "nothing")
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "features": {**config["features"],
                                                                                     "version": 0}}))
    with pytest.raises(ValueError, match="features version 0.*retrain it"):
        FeatureLabelClassifier.from_pretrained(tmp_path / "old")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "soundsmith-labels"}))
    with pytest.raises(ValueError, match="model_type is 'soundsmith-labels'"):
        FeatureLabelClassifier.from_pretrained(tmp_path / "other")
    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "metadata.jsonl").write_text(json.dumps({"file_name": "train/x.wav", "split": "train",
                                                               "labels": None}) + "\n")
    with pytest.raises(ValueError, match="no clips with corpus labels in split 'train'"):
        train_feature_label_classifier(tmp_path / "c", None, cache_dir=tmp_path / "cache", config=FAST)


def test_features_are_cached(trained, corpus):
    _, _, cache = trained
    entries = list(cache.glob("handfeat-*/*/*.npy"))
    assert len(entries) == 48
    from soundsmith.codecs.audio import read_audio
    from soundsmith.eval.cache import file_hash

    path = corpus / "test" / "0036.wav"
    cached = np.load(next(cache.glob(f"handfeat-*/*/{file_hash(path)}.npy")))
    np.testing.assert_allclose(cached, HandcraftedFeatures()([read_audio(path)[0]], SR)[0], rtol=1e-5, atol=1e-5)


def test_disagreement():
    first = [{"domain": "sfx", "sfx_class": "rain"}, {"domain": "music", "instrument": "piano"},
             {"domain": "sfx", "sfx_class": "wind"}]
    second = [{"domain": "sfx", "sfx_class": "rain"}, {"domain": "sfx", "sfx_class": "rain"},
              {"domain": "sfx", "sfx_class": "rain"}]
    truth = [{"sfx_class": ["rain"]}, {"domain": ["music"], "instrument": ["piano"]}, {"sfx_class": "rain"}]
    d = disagreement(first, second, truth)
    assert d["indices"] == [1, 2] and d["all"] == {"n": 3, "differ": 2, "rate": 2 / 3}
    fam = d["per_family"]
    assert fam["sfx_class"] == {"n": 2, "differ": 1, "only_first": 0, "only_second": 1, "rate": 0.5}
    assert fam["instrument"]["only_first"] == 1 and fam["domain"]["only_first"] == 1
    with pytest.raises(ValueError, match="one prediction of each per clip"):
        disagreement(first, second[:2], truth)


def test_cli_train_feature_labels(corpus, tmp_path, capsys):
    from soundsmith.cli import main

    assert main(["eval", "train-feature-labels", "--data", str(corpus), "--out", str(tmp_path / "fl"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "language" in out and "saved:" in out
    load_feature_label_classifier(tmp_path / "fl")
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "missing", "data folder not found"),
                            (tmp_path / "empty", "no metadata.jsonl in data folder")):
        assert main(["eval", "train-feature-labels", "--data", str(folder), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


# -------------------------------------------------------------- both classifiers: harness and adherence


@pytest.fixture(scope="module")
def clap_labeler(corpus, tmp_path_factory):
    """The CLAP-feature classifier on a tiny random CLAP, saved with its CLAP (so a folder loads it)."""
    from ldm_helpers import TINY_CLAP
    from soundsmith.eval.labels import LabelTrainConfig, train_label_classifier
    from soundsmith.gen.clap import SoundsmithClap
    from soundsmith.gen.text_encoder import SentenceEncoder

    torch.manual_seed(0)
    clap = SoundsmithClap(TINY_CLAP, text_encoder=SentenceEncoder()).eval()
    root = tmp_path_factory.mktemp("clap-labels")
    clap.save_pretrained(root / "clap")
    train_label_classifier(corpus, root / "labels", clap=root / "clap", cache_dir=root / "cache",
                           config=LabelTrainConfig(hidden=32, epochs=60, lr=1e-2), progress=False)
    return root / "labels"


def labelled_clips(folder: Path, corpus: Path, wrong: int = 0) -> list[dict]:
    """The corpus test clips with sidecars; the first `wrong` claim a label they do not have."""
    from soundsmith.pipelines.prompts import labels_of

    folder.mkdir()
    rows = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r["split"] == "test"]
    for i, row in enumerate(tests):
        (folder / f"{i:02d}.wav").write_bytes((corpus / row["file_name"]).read_bytes())
        labels = {"sfx_class": ["thunder"]} if i < wrong else labels_of(row)
        (folder / f"{i:02d}.json").write_text(json.dumps({"prompt": row["caption"], "labels": labels}))
    return tests


def test_harness_reports_both_classifiers(tmp_path, corpus, trained, clap_labeler):
    from soundsmith.eval.harness import score_folders
    from soundsmith.eval.labels import LabelClassifier

    _, folder, _ = trained
    labelled_clips(tmp_path / "gen", corpus)
    r = score_folders(tmp_path / "gen", None, metrics=["labels"], labels_model=LabelClassifier.from_pretrained(
        clap_labeler), feature_labels_model=folder, cache_dir=tmp_path / "cache", out=tmp_path / "out",
        progress=False)
    names = {m["metric"]: m for m in r["metrics"]}
    assert names["feature_label_accuracy"]["value"] == 1.0 and "soundsmith-feature-labels" in \
        names["feature_label_accuracy"]["note"]
    assert {"label_accuracy", "feature_label_accuracy_sfx_class", "label_disagreement"} <= set(names)
    assert r["per_clip"][0]["predicted_features"]["domain"] == "sfx"
    dis = r["label_disagreement"]
    assert dis["all"]["n"] == 12 and len(dis["clips"]) == dis["all"]["differ"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "soundsmith-feature-labels (hand-crafted features)" in report
    csv_rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert any(r.startswith("feature_label_accuracy,1,") and "soundsmith-feature-labels" in r for r in csv_rows)
    from soundsmith.eval.report import format_metric_table

    assert "label classifiers disagree on" in format_metric_table(r)

    # no feature classifier: said once, the CLAP-feature accuracy stays
    r = score_folders(tmp_path / "gen", None, metrics=["labels"], labels_model=clap_labeler,
                      feature_labels_model=tmp_path / "none", cache_dir="", progress=False)
    assert [m["metric"] for m in r["not_computed"]] == ["feature_label_accuracy"]
    assert "label_accuracy" in {m["metric"] for m in r["metrics"]} and "label_disagreement" not in r


def adherence_module():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "adherence.py"
    spec = importlib.util.spec_from_file_location("adherence_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adherence_scores_kept_clips_with_both_classifiers(tmp_path, trained, clap_labeler, capsys):
    adherence = adherence_module()
    _, folder, _ = trained
    prompts = [{"prompt": "a siren wails", "domain": "sfx", "label": "siren"},
               {"prompt": "violin music", "domain": "music", "label": "violin"},
               {"prompt": "someone speaking French", "domain": "speech", "label": "fr"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    clips = tmp_path / "clips"
    clips.mkdir()
    seeds = adherence.clip_seeds(3, 2, 7)
    assert seeds == [7, 8, 9, 10, 11, 12]
    for j, s in enumerate(seeds):
        row = prompts[j // 2]
        write_audio(clips / f"{j}.wav", clip(row["domain"], row["label"], 100 + j), SR)
        (clips / f"{j}.json").write_text(json.dumps({"prompt": row["prompt"], "seed": s, "sample_rate": SR}))
    assert adherence.main(["--from-clips", str(clips), "--prompts", str(tmp_path / "p.jsonl"), "--seeds", "2",
                           "--seed", "7", "--labels", str(clap_labeler), "--feature-labels", str(folder),
                           "--threads", "1"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["scorers"] == ["labels", "feature-labels"] and summary["num_clips"] == 6
    assert summary["adherence"]["feature-labels"] == 1.0
    assert set(summary["per_family"]["labels"]) == {"sfx_class", "instrument", "language"}
    assert summary["ceiling"]["feature-labels"]["sfx_class"] == 1.0
    assert summary["disagree"]["clips"] == round(6 * abs(summary["adherence"]["labels"] - 1.0))
    assert "language" in out and "(1.000)" in out
    with pytest.raises(SystemExit, match="no clip for prompt 'a siren wails' with seed 0"):
        adherence.main(["--from-clips", str(clips), "--prompts", str(tmp_path / "p.jsonl"), "--seeds", "2",
                        "--labels", str(clap_labeler), "--feature-labels", str(folder), "--threads", "1"])


def test_adherence_scores_mixtures_by_both_classes_and_tempo_by_the_top_one():
    adherence = adherence_module()
    sfx = adherence.family_classes("sfx_class")
    bands = adherence.family_classes("tempo")
    assert bands == ["slow", "moderate", "fast"]

    class Stub:  # logits fixed per clip: clip 0 ranks rain, wind, thunder first; clip 1 ranks fast, slow, moderate
        classes = {"sfx_class": sfx, "tempo": bands}

        def features(self, waves, sample_rate):
            return np.arange(len(waves))[:, None]

        def family_logits(self, x):
            s = -np.arange(len(sfx), dtype=float)[None].repeat(len(x), 0)
            return {"sfx_class": s, "tempo": np.array([[1.0, 0.0, 2.0]]).repeat(len(x), 0)}

    rows = [{"domain": "sfx", "family": "mixture", "labels": {"domain": "sfx", "classes": ["wind", "thunder"]}},
            {"domain": "sfx", "family": "mixture", "labels": {"domain": "sfx", "classes": ["rain", sfx[5]]}},
            {"domain": "music", "family": "tempo", "label": "fast"},
            {"domain": "music", "family": "tempo", "label": "slow"},
            {"domain": "sfx", "label": "thunder"}]
    ranks = adherence.classifier_ranks(Stub(), rows, torch.zeros(len(rows), 10), SR)
    assert ranks == [3, 6, 1, 2, 3]  # a mixture takes the worse rank of its two classes
    assert [adherence.FAMILY_TOP.get(adherence.prompt_family(r), 3) for r in rows] == [3, 3, 1, 1, 3]
    assert adherence.family_chance("mixture", 3) == pytest.approx(6 / 380)
    assert adherence.family_chance("tempo", 3) == pytest.approx(1 / 3)
    assert adherence.family_chance("language", 3) == pytest.approx(0.5)


def test_the_family_prompt_set_asks_what_adherence_lacks():
    from soundsmith.pipelines.prompts import labels_of
    from soundsmith.train.prompt_sets import (
        EXTRA_WORDINGS,
        MIXTURE_PROMPTS,
        TEMPO_PROMPTS_PER_BAND,
        family_prompts,
    )

    rows = family_prompts(np.random.default_rng(3))
    assert rows == family_prompts(np.random.default_rng(3))
    by = {}
    for r in rows:
        family = r.get("family") or {"music": "instrument", "speech": "language"}[r["domain"]]
        by.setdefault(family, []).append(r)
    assert len(by["mixture"]) == MIXTURE_PROMPTS and len(by["tempo"]) == 3 * TEMPO_PROMPTS_PER_BAND
    assert len(by["language"]) == 6 * EXTRA_WORDINGS["language"]
    pairs = [frozenset(r["labels"]["classes"]) for r in by["mixture"]]
    assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)
    assert all(labels_of(r) == {"sfx_class": r["labels"]["classes"]} for r in by["mixture"])
    assert all(labels_of(r) == {"tempo": [r["label"]]} for r in by["tempo"])
    committed = Path(__file__).resolve().parent.parent / "benchmarks" / "prompts" / "adherence-families.jsonl"
    assert [json.loads(line) for line in committed.read_text().splitlines()] == \
        family_prompts(np.random.default_rng(np.random.SeedSequence([13, 4])))
