"""The novelty metric (eval/novelty.py): the training index (build, reuse, rebuild, load), nearest-clip
search and its statistics, the harness's novelty section, `soundsmith eval index` and bad input."""

import json
import shutil

import numpy as np
import pytest
from eval_helpers import SR, BandEmbedder, clip, write_corpus
from soundsmith.codecs.audio import read_audio, write_audio
from soundsmith.eval.embedders import EMBEDDERS
from soundsmith.eval.harness import score_folders
from soundsmith.eval.novelty import (
    TrainingIndex,
    build_index,
    default_index_dir,
    load_index,
    nearest_training_clip,
    novelty,
    resolve_index,
)
from soundsmith.eval.report import format_metric_table

from soundsmith.cli import main

TRAIN_CLIPS = 4 * 6  # eval_helpers.PER_SPLIT["train"] x classes


class ShapeEmbedder(BandEmbedder):
    """The eval tests' band embedder with each window's mean log energy removed (the spectral shape alone),
    counting the clips it embeds. Raw log band energies are all negative and alike (cosine ~0.9999 between
    any two clips); centred, unrelated sounds land far apart (cosine ~0.5), while the tiny corpus's clips of
    one class, which differ only by faint noise, stay ~0.9999 apart."""

    name = "test-shape"

    def __init__(self, offset: float = 0.0):
        super().__init__(offset)
        self.calls = 0

    def embed(self, wave, sample_rate):
        self.calls += 1
        bands = super().embed(wave, sample_rate)  # [S, 8]
        return bands - bands.mean(1, keepdims=True)

    def describe(self) -> dict:
        return {**super().describe(), "name": self.name, "pooling": "log band energies minus their mean"}

    def fingerprint(self) -> str:
        return f"shape-{self.offset}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("novelty") / "corpus")


@pytest.fixture(scope="module")
def encoder():
    from soundsmith.gen.text_encoder import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """(index folder, cache root) of the corpus's train split."""
    cache = tmp_path_factory.mktemp("cache")
    return build_index(corpus, embedder=ShapeEmbedder(), cache_dir=cache, progress=False), cache


def rows(corpus):
    return [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ the index


def test_build_reuse_and_rebuild(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    emb = ShapeEmbedder()
    path = build_index(corpus, embedder=emb, cache_dir=cache, progress=False)
    assert path == default_index_dir(corpus, embedder="test-shape", cache_dir=cache)
    assert path.parent == cache and path.name.startswith("index-corpus-train-test-shape-")
    assert emb.calls == TRAIN_CLIPS
    index = load_index(path)
    assert len(index) == TRAIN_CLIPS and index.dim == 8 and index.split == "train"
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-6)
    train = {r["file_name"]: r["caption"] for r in rows(corpus) if r["split"] == "train"}
    assert {c["file_name"]: c["caption"] for c in index.clips} == train
    assert index.embedder_fingerprint == emb.fingerprint() and len(index.data_fingerprint) == 24

    # the same data and embedder: the index is reused, nothing is embedded or rewritten
    stamp = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert build_index(corpus, embedder=emb, cache_dir=cache, progress=False) == path
    assert emb.calls == TRAIN_CLIPS and {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamp

    # one clip changed: rebuilt, and only that clip is embedded (the rest come from the embedding cache)
    changed = sorted(train)[3]
    write_audio(corpus / changed, clip("sfx", "siren", 999), SR)
    assert build_index(corpus, embedder=emb, cache_dir=cache, progress=False) == path
    assert emb.calls == TRAIN_CLIPS + 1 and load_index(path).data_fingerprint != index.data_fingerprint

    # another embedder ("model"): a different fingerprint, so the same --out folder is rebuilt
    other = ShapeEmbedder(offset=1.0)
    build_index(corpus, path, embedder=other, cache_dir=cache, progress=False)
    assert other.calls == TRAIN_CLIPS and load_index(path).embedder_fingerprint == other.fingerprint()


def test_corrupt_or_half_written_index_says_rebuild(built, tmp_path):
    path, _ = built
    copy = shutil.copytree(path, tmp_path / "copy")
    meta = json.loads((copy / "index.json").read_text())
    meta["embeddings_sha256"] = "0" * 64  # as if the matrix were replaced after the JSON was written
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not match .*index.json.*rebuild it with `soundsmith eval index"):
        load_index(copy)


def test_exact_copy_scores_one_and_names_the_clip(built, corpus, shape_registered):
    path, _ = built
    index = load_index(path)
    target = index.clips[8]  # its nearest other clip (same class, other noise) is at ~0.9995
    wave, sr = read_audio(corpus / target["file_name"])
    near = nearest_training_clip(wave, sr, index, ShapeEmbedder())
    assert near.similarity == pytest.approx(1.0, abs=1e-6)
    assert (near.file_name, near.caption) == (target["file_name"], target["caption"])
    # from the index folder, with the embedder the index records (loaded from the registry by its name)
    assert nearest_training_clip(wave, sr, path) == near
    # an unrelated sound is far from every training clip
    rng = np.random.default_rng(0)
    assert nearest_training_clip(0.1 * rng.standard_normal((1, SR)).astype(np.float32), sr, index,
                                 ShapeEmbedder()).similarity < 0.9
    with pytest.raises(ValueError, match=r"built with embedder 'test-shape' .* rebuild it with `soundsmith eval index"):
        nearest_training_clip(wave, sr, index, ShapeEmbedder(offset=1.0))  # another model


# ------------------------------------------------------------------------------------------- the metric


def hand_index() -> TrainingIndex:
    """Four orthonormal training vectors in 4-D."""
    return TrainingIndex(embeddings=np.eye(4, dtype=np.float32), embedder={"name": "hand"}, embedder_fingerprint="h",
                         clips=[{"file_name": f"train/{i}.wav", "caption": f"clip {i}", "domain": "sfx"}
                                for i in range(4)])


def at(cos: float, axis: int) -> np.ndarray:
    """A unit vector with cosine `cos` to axis `axis` (the rest on the last axis)."""
    v = np.zeros(4)
    v[axis] = cos
    v[3 if axis != 3 else 2] = np.sqrt(1 - cos**2)
    return v


def test_novelty_statistics_and_threshold():
    gen = np.stack([at(1.0, 0), at(0.96, 1), at(0.83, 2), at(0.5, 0)]) * 3.0  # scale does not matter
    r = novelty(gen, hand_index(), threshold=0.9)
    sims = [c["similarity"] for c in r["per_clip"]]
    assert sims[:3] == pytest.approx([1.0, 0.96, 0.83], abs=1e-6)
    assert sims[3] == pytest.approx(np.sqrt(1 - 0.25), abs=1e-6)  # its nearest is axis 3, not axis 0
    assert [c["nearest_file"] for c in r["per_clip"]] == ["train/0.wav", "train/1.wav", "train/2.wav", "train/3.wav"]
    assert r["per_clip"][1]["nearest_caption"] == "clip 1"
    assert r["plagiarism_rate"] == 0.5 and r["above_threshold"] == 2
    assert [c["above_threshold"] for c in r["per_clip"]] == [True, True, False, False]
    assert novelty(gen, hand_index(), threshold=0.8)["plagiarism_rate"] == 1.0
    assert novelty(gen, hand_index(), threshold=1.0)["plagiarism_rate"] == 0.25  # only the exact copy
    assert novelty(gen, hand_index(), threshold=0.96 - 1e-6)["plagiarism_rate"] == 0.5  # >= counts
    assert r["mean"] == pytest.approx(np.mean(sims)) and r["max"] == pytest.approx(1.0, abs=1e-6)
    assert r["median"] == pytest.approx(np.median(sims)) and r["p90"] == pytest.approx(np.percentile(sims, 90))
    h = r["histogram"]
    assert len(h["edges"]) == 41 and h["edges"][-2] == 0.95 and sum(h["counts"]) == 4
    assert h["counts"][-4:] == [1, 1, 0, 2]  # [0.8, 0.85): 0.83, [0.85, 0.9): 0.866, [0.95, 1]: 1.0 and 0.96


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5, float("nan"), "0.9"])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got"):
        novelty(np.eye(4)[:1], hand_index(), threshold=threshold)


def test_bad_embeddings():
    with pytest.raises(ValueError, match="gen_embeddings have 3 dims, the training index 4"):
        novelty(np.ones((2, 3)), hand_index())
    with pytest.raises(ValueError, match=r"must be \[M, D\] with M >= 1"):
        novelty(np.ones((0, 4)), hand_index())


def test_missing_index_says_how_to_build_one(corpus, tmp_path):
    empty_cache = tmp_path / "cache"
    where = default_index_dir(corpus, cache_dir=empty_cache)
    with pytest.raises(FileNotFoundError, match=f"no training index at {where}: build it with "
                       f"`soundsmith eval index {corpus}`$"):
        resolve_index(corpus, cache_dir=empty_cache)
    with pytest.raises(FileNotFoundError, match=r"no training index at .*nowhere: build it with "
                       r"`soundsmith eval index DATA`"):
        load_index(tmp_path / "nowhere")
    gen = tmp_path / "gen"
    gen.mkdir()
    write_audio(gen / "a.wav", clip("sfx", "siren", 1), SR)
    with pytest.raises(FileNotFoundError, match="no training index at"):  # before any embedding
        score_folders(gen, None, metrics=["clap"], novelty_index=corpus, cache_dir=empty_cache, progress=False)


# ---------------------------------------------------------------------------------------- the harness


def test_harness_novelty_section(built, corpus, tmp_path):
    """Two copies of training clips and two new sounds: the copies score ~1 and name their clips; the
    report lists the distribution, the plagiarism rate and the nearest clip beside the CLAP score."""
    path, cache = built
    index = load_index(path)
    gen = tmp_path / "generated"
    gen.mkdir()
    copies = [index.clips[2], index.clips[11]]
    for k, c in enumerate(copies):
        shutil.copy(corpus / c["file_name"], gen / f"copy{k}.wav")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    write_audio(gen / "new0.wav", (0.3 * np.sin(2 * np.pi * (200 + 2000 * t) * t))[None].astype(np.float32), SR)
    write_audio(gen / "new1.wav", (0.1 * rng.standard_normal((1, t.size))).astype(np.float32), SR)
    # `embedding` is the index's embedder; the corpus folder finds its index under the cache
    r = score_folders(gen, None, metrics=["is"], embedding=ShapeEmbedder(), cache_dir=cache, novelty_index=corpus,
                      novelty_threshold=0.999, out=tmp_path / "out", progress=False)
    by_name = {c["file"].split("/")[-1]: c for c in r["per_clip"]}
    for k, c in enumerate(copies):
        row = by_name[f"copy{k}.wav"]
        assert row["novelty_similarity"] == pytest.approx(1.0, abs=1e-5) and row["above_threshold"]
        assert (row["nearest_train_file"], row["nearest_train_caption"]) == (c["file_name"], c["caption"])
    assert by_name["new0.wav"]["novelty_similarity"] < 0.9 and by_name["new1.wav"]["novelty_similarity"] < 0.9
    nov = r["novelty"]
    assert nov["plagiarism_rate"] == 0.5 and nov["threshold"] == 0.999 and nov["index"]["clips"] == TRAIN_CLIPS
    values = {m["metric"]: m["value"] for m in r["metrics"]}
    assert values["plagiarism_rate"] == 0.5 and values["novelty_sim_max"] == pytest.approx(1.0, abs=1e-5)
    assert {"novelty_sim_mean", "novelty_sim_median", "novelty_sim_p90"} <= set(values)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Novelty: nearest training clip" in md and "plagiarism rate: 2 of 4 clips (50.0%)" in md
    assert f"| copy0.wav |  | {copies[0]['file_name']} | {copies[0]['caption']} | 1.000 * |" in md
    assert "plots/novelty.png" in md and "text-audio CLAP score" in md
    table = format_metric_table(r)
    assert "plagiarism_rate" in table and "novelty: 2 of 4 clips at or above similarity 0.999" in table


def test_harness_clap_score_beside_novelty(built, corpus, tmp_path, encoder):
    """With prompts in the sidecars, each clip's novelty row carries its text-audio CLAP score."""
    from ldm_helpers import tiny_clap

    path, cache = built
    index = load_index(path)
    gen = tmp_path / "generated"
    gen.mkdir()
    for k, c in enumerate(index.clips[:3]):
        wave, sr = read_audio(corpus / c["file_name"])
        write_audio(gen / f"g{k}.wav", wave, sr, metadata={"prompt": c["caption"], "prompt_index": k})
    emb = ShapeEmbedder()
    r = score_folders(gen, None, metrics=["clap"], embedding=emb, clap_model=tiny_clap(encoder),
                      cache_dir=cache, novelty_index=path, out=tmp_path / "out", progress=False)
    assert emb.calls == 0  # same audio as the training clips: their windows come from the cache the index filled
    for row in r["per_clip"]:
        assert isinstance(row["clap_score"], float) and row["novelty_similarity"] == pytest.approx(1.0, abs=1e-5)
    md = (tmp_path / "out" / "report.md").read_text()
    row = next(c for c in r["per_clip"] if c["file"].endswith("g0.wav"))
    assert f"| 1.000 * | {row['clap_score']:.3f} |" in md


def test_run_eval_with_novelty(built, tmp_path, encoder):
    """`eval run` generates, then reports novelty; a missing index fails before anything is generated."""
    from ldm_helpers import tiny_pipeline
    from soundsmith.eval.harness import run_eval

    path, cache = built
    pipe = tiny_pipeline(encoder)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a siren", "a violin")))
    kwargs = dict(metrics=["clap"], embedding=ShapeEmbedder(), clap_model=pipe.conditioner.model, cache_dir=cache,
                  pipeline_kwargs={"duration_s": 0.5}, progress=False, pipeline=pipe)
    with pytest.raises(FileNotFoundError, match="no training index at .*: build it with `soundsmith eval index"):
        run_eval("tiny", prompts, None, tmp_path / "missing", novelty_index=tmp_path / "nowhere", **kwargs)
    assert not (tmp_path / "missing" / "generated").exists()
    with pytest.raises(ValueError, match=r"novelty_threshold must be in \(0, 1\], got 0"):
        run_eval("tiny", prompts, None, tmp_path / "missing", novelty_index=path, novelty_threshold=0, **kwargs)
    r = run_eval("tiny", prompts, None, tmp_path / "out", novelty_index=path, novelty_threshold=0.5, **kwargs)
    assert r["novelty"]["n"] == 2 and r["novelty"]["threshold"] == 0.5
    for row in r["per_clip"]:
        assert -1 <= row["novelty_similarity"] <= 1 and row["nearest_train_file"].startswith("train/")
        assert isinstance(row["clap_score"], float)
    assert "## Novelty: nearest training clip" in (tmp_path / "out" / "report.md").read_text()


# -------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def shape_registered(monkeypatch):
    monkeypatch.setitem(EMBEDDERS, "test-shape", lambda checkpoint, device, trust_pickle: ShapeEmbedder())


def test_cli_eval_index(corpus, tmp_path, capsys, shape_registered):
    cache = tmp_path / "cache"
    argv = ["eval", "index", str(corpus), "--embedder", "test-shape", "--cache-dir", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(default_index_dir(corpus, embedder="test-shape", cache_dir=cache))
    assert out[1].startswith(f"{TRAIN_CLIPS} clips x 8 dims") and "train split of" in out[1]
    assert main(argv) == 0 and capsys.readouterr().out.splitlines()[0] == out[0]  # reused, same place
    assert main(argv[:3] + ["--split", "valid", "--out", str(tmp_path / "idx"), "--embedder", "test-shape"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(tmp_path / "idx")
    assert len(load_index(tmp_path / "idx")) == 2 * 6


def test_cli_novelty_errors(corpus, tmp_path, capsys, shape_registered):
    gen = tmp_path / "gen"
    gen.mkdir()
    write_audio(gen / "a.wav", clip("sfx", "siren", 1), SR)
    base = ["eval", "score", "--generated", str(gen), "--metrics", "is", "--embedding", "test-shape",
            "--cache-dir", str(tmp_path / "empty")]
    assert main(base + ["--novelty-index", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training index at" in err
    assert f"build it with `soundsmith eval index {corpus} --embedder test-shape`" in err
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--novelty-index", str(corpus), "--novelty-threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "--novelty-threshold: must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["eval", "index", str(tmp_path / "nope")]) == 2
    assert "data folder not found" in capsys.readouterr().err
