"""Classifier and text-audio metrics (eval/metrics.py) on hand-checked cases and against scipy."""

import numpy as np
import pytest
from scipy.special import expit, softmax
from scipy.stats import entropy
from soundsmith.eval.metrics import (
    batch_probabilities,
    clap_score,
    cosine_scores,
    inception_score,
    kl_divergence,
    kl_metrics,
    label_accuracy,
    probabilities,
)


def test_cosine_and_clap_score():
    text = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    audio = np.array([[2.0, 0.0], [1.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosine_scores(text, audio), [1.0, 0.0, 24 / 25])
    r = clap_score(text, audio, groups=[0, 0, 1])
    assert r["mean"] == pytest.approx((1 + 0 + 0.96) / 3) and r["n"] == 3
    assert r["per_group"] == {0: pytest.approx(0.5), 1: pytest.approx(0.96)}
    with pytest.raises(ValueError, match="one text per clip"):
        cosine_scores(text[:2], audio)
    with pytest.raises(ValueError, match="groups has 2 entries for 3 clips"):
        clap_score(text, audio, groups=[0, 1])


def test_probabilities_average_windows_after_the_activation():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # two windows
    np.testing.assert_allclose(probabilities(logits, "softmax"), softmax(logits, axis=1).mean(0))
    np.testing.assert_allclose(probabilities(logits, "sigmoid"), expit(logits).mean(0))
    np.testing.assert_allclose(probabilities(logits[0]), softmax(logits[0]))
    assert batch_probabilities([logits, logits[:1]]).shape == (2, 3)
    with pytest.raises(ValueError, match="activation must be one of softmax, sigmoid"):
        probabilities(logits, "relu")
    with pytest.raises(ValueError, match="NaN or infinite"):
        probabilities(np.array([np.nan, 1.0]))


def test_kl_matches_scipy_and_its_directions():
    rng = np.random.default_rng(0)
    p = softmax(rng.standard_normal((5, 7)), axis=1)
    q = softmax(rng.standard_normal((5, 7)), axis=1)
    # scipy's entropy(p, q) is KL(p||q) without the 1e-6 offset; the offset moves it by < 1e-4 here
    np.testing.assert_allclose(kl_divergence(p, q), [entropy(a, b) for a, b in zip(p, q)], atol=1e-4)
    assert np.allclose(kl_divergence(p, p), 0.0, atol=1e-4)
    one_hot = np.eye(3)[[0]]
    assert kl_divergence(one_hot, np.array([[0.5, 0.25, 0.25]]))[0] == pytest.approx(np.log(2), abs=1e-5)

    gen_logits = [rng.standard_normal((2, 7)) for _ in range(5)]
    ref_logits = [rng.standard_normal((3, 7)) for _ in range(5)]
    out = kl_metrics(gen_logits, ref_logits)
    gen_p, ref_p = batch_probabilities(gen_logits), batch_probabilities(ref_logits)
    assert out["kl_softmax_ref_gen"] == pytest.approx(kl_divergence(ref_p, gen_p).mean())
    assert out["kl_softmax_gen_ref"] == pytest.approx(kl_divergence(gen_p, ref_p).mean())
    assert out["kl_softmax_ref_gen"] != pytest.approx(out["kl_softmax_gen_ref"])
    gen_s, ref_s = batch_probabilities(gen_logits, "sigmoid"), batch_probabilities(ref_logits, "sigmoid")
    by_hand = (ref_s * (np.log(ref_s) - np.log(gen_s + 1e-6))).sum(1).mean()  # audioldm_eval's sigmoid formula
    assert out["kl_sigmoid_ref_gen"] == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="paired clips: 5 generated vs 4 reference"):
        kl_metrics(gen_logits, ref_logits[:4])


def test_inception_score():
    k = 4
    confident = np.eye(k)[np.arange(40) % k]  # confident and balanced: IS = K with one split
    assert inception_score(confident, splits=1) == (pytest.approx(k), 0.0)
    same = np.tile(softmax(np.arange(k, dtype=float)), (40, 1))  # every clip alike: IS = 1
    mean, std = inception_score(same)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)
    # 10 splits: each split's score by an independent computation on the same shuffle
    rng = np.random.default_rng(1)
    p = softmax(rng.standard_normal((53, 6)) * 2, axis=1)
    parts = np.array_split(p[np.random.default_rng(2020).permutation(53)], 10)
    expected = [np.exp(np.mean([entropy(row, part.mean(0)) for row in part])) for part in parts]
    mean, std = inception_score(p)
    assert mean == pytest.approx(np.mean(expected)) and std == pytest.approx(np.std(expected))
    with pytest.raises(ValueError, match="10 splits needs at least 10 clips, got 5"):
        inception_score(p[:5])
    with pytest.raises(ValueError, match="rows summing to 1"):
        inception_score(p * 2)


def test_label_accuracy():
    predicted = [{"domain": "music", "instrument": "violin", "tempo": "fast"},
                 {"domain": "sfx", "sfx_class": "rain"},
                 {"domain": "speech", "language": "de"}]
    truth = [{"instrument": ["violin", "piano"], "tempo": ["slow"]},
             {"sfx_class": ["wind"]},
             {"instrument": ["flute"]}]  # predicted as speech: the instrument family is missing -> wrong
    acc = label_accuracy(predicted, truth)
    assert acc["instrument"] == {"accuracy": 0.5, "n": 2}
    assert acc["tempo"] == {"accuracy": 0.0, "n": 1} and acc["sfx_class"] == {"accuracy": 0.0, "n": 1}
    assert acc["all"] == {"accuracy": 0.25, "n": 4}
    with pytest.raises(ValueError, match="one prediction per clip"):
        label_accuracy(predicted[:2], truth)
