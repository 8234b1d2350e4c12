"""MelRVQCodec (residual VQ over the mel VAE latent): shapes, codes <-> latent, folders (links, fp16, refusing
another VAE), the acoustic-codec dispatch, and its training (k-means start, EMA refinement, the CLI run)."""

import json
import shutil

import pytest
import torch
from soundsmith.codecs.mel_rvq import MelRVQCodec, load_acoustic_codec
from soundsmith.codecs.neural_codec import NeuralCodec
from soundsmith.codecs.rvq import ResidualVQ
from soundsmith.eval.codec_report import load_codec
from soundsmith.train.train_mel_rvq import fit_kmeans_, validate
from token_helpers import SR, clip, tiny_codec, tiny_mel_codec, tiny_mel_rvq
from train_helpers import write_corpus

from soundsmith.cli import main


@pytest.fixture(scope="module")
def codec():
    return tiny_mel_rvq()


def test_shapes_and_levels(codec):
    wave = clip(0.5, batch=2)  # [2, 1, 8000]: 12.5 frames of 640 samples, padded to 13
    codes = codec.encode(wave, SR)
    assert codes.shape == (2, 4, 13) and codes.dtype == torch.int64 and int(codes.max()) < 16
    assert codec.frame_rate == 25.0 and codec.hop_length == 640 and codec.num_frames(8000) == 13
    assert codec.max_levels == 4 and codec.codebook_size == 16 and codec.sample_rate == SR
    assert codec.decode(codes).shape == (2, 1, 13 * 640)
    assert codec.decode(codes[:, :2], num_samples=8000).shape == (2, 1, 8000)  # any prefix of levels decodes
    assert torch.equal(codec.encode(wave, SR, n_levels=2), codes[:, :2])
    assert codec.reconstruct(clip(0.3, batch=1), SR).shape == (1, 1, int(0.3 * SR))
    with pytest.raises(ValueError, match=r"n_levels must be an integer in \[1, 4\]"):
        codec.encode(wave, SR, n_levels=5)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 15\]"):
        codec.decode(torch.full((1, 2, 3), 16))
    with pytest.raises(ValueError, match="codes must be shaped"):
        codec.decode(torch.zeros(1, 5, 3, dtype=torch.long))


def test_codes_to_latent_is_the_quantized_latent(codec):
    wave = clip(0.5, seed=1, batch=1)
    latent = codec.mel_codec.encode(wave, SR)  # [1, 4, 13, 4]
    vectors = codec.latent_to_vectors(latent)  # [1, 16, 13]
    assert vectors.shape == (1, 16, 13) and torch.equal(codec.vectors_to_latent(vectors), latent)
    assert torch.equal(vectors[0, :, 5], latent[0, :, 5, :].reshape(-1))  # one frame = channels x rows, in order
    codes = codec.encode(wave, SR)
    quantized = codec.quantizer(vectors, 4).quantized  # what the RVQ makes of the latent (eval mode)
    assert torch.equal(codec.codes_to_latent(codes), codec.vectors_to_latent(quantized))
    # decoding is the mel path on that latent, cropped
    assert torch.equal(codec.decode(codes), codec.mel_codec.decode(codec.codes_to_latent(codes)))


def test_folder_round_trip_links_the_mel_codec(codec, tmp_path):
    codec.mel_codec.save_pretrained(tmp_path / "models" / "mel-codec")
    folder = codec.save_pretrained(tmp_path / "models" / "tokens" / "codec", dtype=torch.float16,
                                   mel_codec=tmp_path / "models" / "mel-codec")
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "MelRVQCodec" and config["mel_codec"] == "../../mel-codec"
    assert config["vocoder"]["name"] == "griffin-lim" and len(config["vae_fingerprint"]) == 16
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = MelRVQCodec.from_pretrained(folder)
    assert again.fingerprint() == codec.fingerprint()  # fp16 export: the same fingerprint
    wave = clip(0.5, seed=2, batch=1)
    assert (again.encode(wave, SR) == codec.encode(wave, SR)).float().mean() > 0.9  # fp16 codebooks, rare flips
    codes = codec.encode(wave, SR)
    assert (again.codes_to_latent(codes) - codec.codes_to_latent(codes)).abs().max() < 1e-2  # fp16 codebooks
    assert again.decode(codes).shape == codec.decode(codes).shape
    # saved again from the loaded codec, it keeps pointing at the same mel codec
    copy = again.save_pretrained(tmp_path / "elsewhere" / "codec")
    assert json.loads((copy / "config.json").read_text())["mel_codec"] == "../../models/mel-codec"
    # the vocoder can be swapped: the codes and the fingerprint stay
    other = MelRVQCodec.from_pretrained(folder, vocoder={"name": "griffin-lim", "n_iter": 2})
    assert other.fingerprint() == again.fingerprint() and other.mel_codec.vocoder.n_iter == 2
    # the dispatch: either codec class from its config.json (token pipeline and `soundsmith eval codec`)
    assert isinstance(load_acoustic_codec(folder), MelRVQCodec) and isinstance(load_codec(folder), MelRVQCodec)
    tiny_codec().save_pretrained(tmp_path / "neural")
    assert isinstance(load_acoustic_codec(tmp_path / "neural"), NeuralCodec)


def test_a_codec_built_in_memory_writes_its_mel_codec(codec, tmp_path):
    folder = codec.save_pretrained(tmp_path / "codec")
    assert json.loads((folder / "config.json").read_text())["mel_codec"] == "mel-codec"
    assert (folder / "mel-codec" / "vae" / "config.json").is_file()
    assert MelRVQCodec.from_pretrained(folder).fingerprint() == codec.fingerprint()


def test_another_vae_is_refused(codec, tmp_path):
    codec.mel_codec.save_pretrained(tmp_path / "mel-codec")
    folder = codec.save_pretrained(tmp_path / "codec", mel_codec=tmp_path / "mel-codec")
    shutil.rmtree(tmp_path / "mel-codec")
    tiny_mel_codec(seed=5).save_pretrained(tmp_path / "mel-codec")
    with pytest.raises(ValueError, match=r"fitted on the VAE with fingerprint \w+, the mel codec .* has \w+; refit"):
        MelRVQCodec.from_pretrained(folder)
    shutil.rmtree(tmp_path / "mel-codec")
    with pytest.raises(FileNotFoundError, match="no mel codec folder"):
        MelRVQCodec.from_pretrained(folder)


def _error(rvq: ResidualVQ, x: torch.Tensor) -> float:
    return validate(rvq, x)[f"valid/unexplained_l{rvq.n_q}"]


def test_kmeans_start_and_ema_refinement_reduce_the_error():
    torch.manual_seed(0)
    centres = torch.randn(24, 8) * 3
    x = centres[torch.randint(0, 24, (4096,))] + 0.3 * torch.randn(4096, 8)  # clustered "latent frames" [N, D]
    random_start = ResidualVQ(dim=8, n_q=2, bins=16, kmeans_init=False)
    fitted = ResidualVQ(dim=8, n_q=2, bins=16)
    fit_kmeans_(fitted, x, iters=10, max_vectors=2048, seed=0)
    assert _error(fitted, x) < 0.5 * _error(random_start, x)
    # EMA steps with dead-code restarts on random batches: the random start improves, the k-means start holds
    before = _error(fitted, x)
    for rvq in (random_start, fitted):
        rvq.train()
        for _ in range(40):
            rvq(x[torch.randint(0, len(x), (512,))].t()[None], 2)  # [1, D, 512]
        rvq.eval()
    assert _error(random_start, x) < 0.5 * _error(ResidualVQ(dim=8, n_q=2, bins=16, kmeans_init=False), x)
    assert _error(fitted, x) < 1.2 * before


def test_cli_train_mel_rvq_exports_a_loadable_codec_and_resumes(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", num_train=4, num_valid=2, seconds=0.5)
    tiny_mel_codec().save_pretrained(tmp_path / "mel-codec")
    args = ["train", "mel-rvq", "--data", str(corpus), "--mel-codec", str(tmp_path / "mel-codec"),
            "--out", str(tmp_path / "run"), "--set", "levels=3", "--set", "codebook_size=8", "--set", "kmeans_iters=3",
            "--set", "batch_vectors=32", "--set", "eval_every=2", "--set", "save_every=2", "--set", "num_mel_clips=2"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--resume", "--max-steps", "4"]) == 0
    export = tmp_path / "run" / "export"
    codec = MelRVQCodec.from_pretrained(export)
    assert codec.max_levels == 3 and codec.codebook_size == 8 and codec.quantizer.dim == 16
    assert json.loads((export / "config.json").read_text())["mel_codec"] == "../../mel-codec"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "valid/unexplained_l3" in r] == [0, 2, 4]
    last = next(r for r in reversed(rows) if "valid/mel_l1_vae" in r)
    assert {f"valid/mel_l1_l{k}" for k in (1, 2, 3)} <= set(last)
    assert codec.encode(clip(0.5, batch=1), SR).shape == (1, 3, 13)


def test_default_config_is_complete():
    """train/configs/mel-rvq.json names every field (the shipped recipe is explicit) and loads."""
    import dataclasses

    from soundsmith.train.config import load_config
    from soundsmith.train.train_mel_rvq import DEFAULT_CONFIG, MelRVQTrainConfig

    raw = json.loads(DEFAULT_CONFIG.read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(MelRVQTrainConfig)}
    assert load_config(MelRVQTrainConfig, DEFAULT_CONFIG) == MelRVQTrainConfig()  # the file states the defaults
