"""The trainable residual VQ: shapes, encode/decode agreement, EMA learning, k-means init, dead codes,
straight-through gradients, commitment loss and quantizer dropout."""

import pytest
import torch
from soundsmith.codecs.rvq import EuclideanCodebook, ResidualVQ, kmeans


def clustered(n: int = 512, dim: int = 4, centres: int = 8, seed: int = 0) -> torch.Tensor:
    """`[n, dim]` points around `centres` well-separated centres."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, dim, generator=g) * 5
    return c[torch.randint(0, centres, (n,), generator=g)] + 0.05 * torch.randn(n, dim, generator=g)


def test_encode_decode_shapes_and_prefixes():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, n_q=3, bins=16, kmeans_init=False).eval()
    z = torch.randn(2, 4, 7)  # [B, D, S]
    codes = rvq.encode(z)
    assert codes.shape == (2, 3, 7) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    assert torch.equal(rvq.encode(z, n_q=2), codes[:, :2])  # a prefix of levels is the shorter encoding
    assert rvq.decode(codes).shape == (2, 4, 7)
    out = rvq(z)  # eval forward: all levels, the same codes and sum as encode/decode
    assert out.n_q == 3 and torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, rvq.decode(codes))
    with pytest.raises(ValueError, match=r"n_q must be in \[1, 3\]"):
        rvq.encode(z, n_q=4)


def test_more_levels_reconstruct_better():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, n_q=4, bins=32, kmeans_iters=20).train()
    z = torch.randn(8, 4, 64)
    for _ in range(5):
        rvq(z, n_q=4)  # k-means init of every level on its residual, then EMA steps
    rvq.eval()
    errors = [float((rvq.decode(rvq.encode(z, n_q=n)) - z).pow(2).mean()) for n in range(1, 5)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    x = clustered(centres=8)
    means, sizes = kmeans(x, 64, num_iters=20)  # more seeds than clusters: every cluster gets one
    assert int(sizes.sum()) == len(x)
    nearest = torch.cdist(x, means).min(dim=1).values
    assert float(nearest.max()) < 1.0  # every point sits near a centroid (centres are ~5 apart)


def test_codebook_kmeans_init_on_first_training_batch_only():
    torch.manual_seed(0)
    cb = EuclideanCodebook(4, 64, kmeans_init=True, kmeans_iters=20, dead_code_threshold=0.0)
    assert float(cb.inited) == 0.0 and float(cb.embed.abs().sum()) == 0.0
    x = clustered(centres=8)
    cb.train()
    q, codes = cb(x)
    assert float(cb.inited) == 1.0
    assert float((q - x).pow(2).mean()) < 0.05  # initial centroids already fit the clusters
    first = cb.embed.clone()
    cb(x)  # no second k-means; only a small EMA move
    assert float((cb.embed - first).abs().max()) < 0.5


def test_ema_moves_codewords_to_cluster_means():
    torch.manual_seed(0)
    cb = EuclideanCodebook(2, 2, kmeans_init=False, decay=0.5, dead_code_threshold=0.0).train()
    cb.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    cb.embed_avg.copy_(cb.embed)
    cb.cluster_size.fill_(1.0)
    x = torch.cat([torch.full((50, 2), 1.0), torch.full((50, 2), 9.0)])
    for _ in range(30):
        cb(x)
    torch.testing.assert_close(cb.embed, torch.tensor([[1.0, 1.0], [9.0, 9.0]]), atol=1e-3, rtol=0)


def test_dead_codes_are_refreshed_from_the_batch():
    torch.manual_seed(0)
    cb = EuclideanCodebook(2, 4, kmeans_init=False, dead_code_threshold=0.5).train()
    cb.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    cb.cluster_size.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))  # codes 1..3 never used
    cb.embed_avg.copy_(cb.embed * cb.cluster_size[:, None])
    x = torch.randn(64, 2)
    cb.expire_codes_(x)
    assert float(cb.embed[1:].abs().max()) < 10  # replaced by batch vectors
    torch.testing.assert_close(cb.embed[0], torch.zeros(2))  # the used code stays


def test_straight_through_gradient_and_commitment_reach_the_input():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, n_q=2, bins=8, kmeans_init=False).train()
    z = torch.randn(2, 4, 5, requires_grad=True)
    out = rvq(z, n_q=2)
    assert out.commit_loss.item() > 0
    out.quantized.sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # identity gradient through the quantizer
    z.grad = None
    out.commit_loss.backward()
    assert float(z.grad.abs().sum()) > 0


def test_quantizer_dropout_spans_all_levels_and_is_seeded():
    def levels(seed: int) -> list[int]:
        torch.manual_seed(seed)
        rvq = ResidualVQ(dim=4, n_q=4, bins=8, quantizer_dropout=1.0).train()
        z = torch.randn(1, 4, 3)
        return [rvq(z).n_q for _ in range(40)]

    assert set(levels(0)) == {1, 2, 3, 4}
    assert levels(0) == levels(0)  # the global RNG decides (training checkpoints restore it)
    rvq = ResidualVQ(dim=4, n_q=4, bins=8, quantizer_dropout=1.0)
    z = torch.randn(1, 4, 3)
    rvq.eval()
    assert rvq(z).n_q == 4  # no dropout in eval


def test_codebook_buffers_match_transformers_names():
    rvq = ResidualVQ(dim=4, n_q=2, bins=8)
    assert sorted(rvq.state_dict()) == sorted(
        f"layers.{k}.codebook.{name}" for k in range(2) for name in ("inited", "cluster_size", "embed", "embed_avg"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="quantizer_dropout"):
        ResidualVQ(dim=4, quantizer_dropout=1.5)
    with pytest.raises(ValueError, match="n_q >= 1"):
        ResidualVQ(dim=4, n_q=0)
