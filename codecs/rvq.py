"""Trainable residual vector quantization (SoundStream alg. 1), in EnCodec's three layers.

    EuclideanCodebook   one codebook: nearest codeword, EMA updates, k-means init, dead-code refresh
    VectorQuantizer     one level: `[B, D, S]` <-> codes `[B, S]`, straight-through estimator, commitment
    ResidualVQ          K levels, each quantizing what the previous ones left: `[B, D, S]` <-> `[B, K, S]`

The codebook's buffers are named and shaped as in facebookresearch/encodec `core_vq.py` and
transformers' `EncodecEuclideanCodebook` (`inited [1]`, `cluster_size [bins]`, `embed [bins, D]`,
`embed_avg [bins, D]`), and `ResidualVQ.layers[k].codebook` sits where transformers'
`EncodecResidualVectorQuantizer.layers[k].codebook` does, so our state dict *is* transformers'
quantizer state dict: export writes our codebooks straight into `EncodecModel`'s buffers.

Why our own rather than lucidrains' vector-quantize-pytorch (not installed; it would add einx,
frozendict, loguru and torch-einops-utils): its codebooks carry a heads axis (`embed [1, bins, D]`)
and other buffer names, so every export and import would need a reshaping map; ~20 constructor flags
change the length of its returned tuple; and what we need is ~200 lines of EnCodec's own algorithm.
Two deliberate departures from EnCodec's code:
- the straight-through estimator is applied once to the sum of all levels and residuals use detached
  codewords (audiocraft's fix of facebookresearch/encodec issue #25, where later levels' commitment
  gradients never reached the encoder);
- a code is "dead" when its EMA usage falls below `dead_code_threshold` x the average code's usage,
  not below an absolute count of 2: EnCodec sees ~4800 vectors per step for 1024 codes, our CPU
  batches a few hundred, where an absolute threshold of 2 would declare every code dead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizedResult:
    """What `ResidualVQ.forward` returns."""

    quantized: Tensor  # [B, D, S] sum of the first n_q codewords (straight-through in training)
    codes: Tensor  # [B, n_q, S] int64
    commit_loss: Tensor  # scalar: mean over levels of mean((residual_k - codeword_k)^2); unweighted
    n_q: int  # levels used (quantizer dropout may pick fewer than K in training)
    perplexity: Tensor  # [n_q] exp(entropy) of each level's code usage in this batch (1 .. bins)


# ------------------------------------------------------------------------------------- helpers


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum over processes in place (EMA statistics must agree across data-parallel workers)."""
    if _distributed():
        torch.distributed.all_reduce(t)
    return t


def _broadcast_(tensors: list[Tensor]) -> None:
    """Copy rank 0's tensors to every process (after a random choice such as k-means or code refresh)."""
    if _distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


def sample_vectors(samples: Tensor, num: int) -> Tensor:
    """`num` rows of `samples [N, D]`: without replacement when N >= num, else with replacement."""
    n = samples.shape[0]
    if n >= num:
        idx = torch.randperm(n, device=samples.device)[:num]
    else:
        idx = torch.randint(0, n, (num,), device=samples.device)
    return samples[idx]


def squared_distances(x: Tensor, embed: Tensor) -> Tensor:
    """`[N, D]` x `[bins, D]` -> negative squared distances `[N, bins]` (larger = nearer).

    The same expression, in the same order, as EnCodec and transformers, so that codes agree bit for bit.
    """
    e = embed.t()  # [D, bins]
    return -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e + e.pow(2).sum(0, keepdim=True))


@torch.no_grad()
def kmeans(samples: Tensor, num_clusters: int, num_iters: int = 10) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on `samples [N, D]` -> (centroids [num_clusters, D], cluster sizes [num_clusters]).

    EnCodec's algorithm (random rows as seeds; an empty cluster keeps its centroid) with the distance
    as a matrix product instead of an `[N, C, D]` difference tensor (2 GB at N = 8000, C = 1024, D = 64).
    """
    dim = samples.shape[-1]
    means = sample_vectors(samples, num_clusters)
    bins = torch.zeros(num_clusters, dtype=torch.long, device=samples.device)
    for _ in range(num_iters):
        buckets = squared_distances(samples, means).max(dim=-1).indices  # [N]
        bins = torch.bincount(buckets, minlength=num_clusters)
        empty = bins == 0
        sums = samples.new_zeros(num_clusters, dim).index_add_(0, buckets, samples)
        new_means = sums / bins.clamp(min=1)[:, None].to(samples.dtype)
        means = torch.where(empty[:, None], means, new_means)
    return means, bins


# ----------------------------------------------------------------------------------- codebook


class EuclideanCodebook(nn.Module):
    """One codebook of `bins` codewords of size `dim`, learned by exponential moving averages.

    Args:
        dim: codeword size D.
        bins: number of codewords.
        decay: EMA decay of cluster sizes and sums (EnCodec: 0.99).
        epsilon: Laplace smoothing of cluster sizes.
        kmeans_init: start empty and run k-means on the first training batch (EnCodec); False starts
            from a Kaiming-uniform random codebook.
        kmeans_iters: k-means iterations (EnCodec: 50).
        dead_code_threshold: refresh a code from the batch when its EMA usage is below this fraction
            of the average code's usage; 0 disables the refresh.
    """

    def __init__(self, dim: int, bins: int, *, decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True,
                 kmeans_iters: int = 50, dead_code_threshold: float = 0.1):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.dim, self.bins, self.decay, self.epsilon = dim, bins, decay, epsilon
        self.kmeans_iters, self.dead_code_threshold = kmeans_iters, dead_code_threshold
        embed = torch.zeros(bins, dim)
        if not kmeans_init:
            nn.init.kaiming_uniform_(embed)
        self.register_buffer("inited", torch.tensor([float(not kmeans_init)]))  # [1]
        self.register_buffer("cluster_size", torch.zeros(bins))  # [bins] EMA of code counts
        self.register_buffer("embed", embed)  # [bins, D]
        self.register_buffer("embed_avg", embed.clone())  # [bins, D] EMA of summed assigned vectors

    def quantize(self, x: Tensor) -> Tensor:
        """`[N, D]` -> nearest code `[N]`."""
        return squared_distances(x, self.embed).max(dim=-1).indices

    def encode(self, x: Tensor) -> Tensor:
        """`[..., D]` -> codes `[...]`."""
        return self.quantize(x.reshape(-1, self.dim)).view(x.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        """codes `[...]` -> codewords `[..., D]`."""
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def init_(self, x: Tensor) -> None:
        """k-means initialisation from vectors `[N, D]` (a no-op once initialised)."""
        if bool(self.inited.item()):
            return
        embed, sizes = kmeans(x.float(), self.bins, self.kmeans_iters)
        self.embed.copy_(embed)
        self.cluster_size.copy_(sizes.float())
        self.embed_avg.copy_(embed * sizes.float()[:, None])  # so the first EMA step starts from the centroids
        self.inited.fill_(1.0)
        _broadcast_([self.embed, self.cluster_size, self.embed_avg, self.inited])

    @torch.no_grad()
    def expire_codes_(self, x: Tensor) -> None:
        """Replace rarely used codes by random vectors of the batch `x [N, D]` (SoundStream, EnCodec)."""
        if self.dead_code_threshold <= 0:
            return
        average = self.cluster_size.sum() / self.bins
        dead = self.cluster_size < self.dead_code_threshold * average  # [bins]
        if not bool(dead.any()):
            return
        fresh = sample_vectors(x, self.bins)  # [bins, D]
        self.embed.copy_(torch.where(dead[:, None], fresh, self.embed))
        # a refreshed code restarts at the average usage, so it is not expired again before it is tried
        self.cluster_size.copy_(torch.where(dead, average, self.cluster_size))
        self.embed_avg.copy_(torch.where(dead[:, None], fresh * average, self.embed_avg))
        _broadcast_([self.embed, self.cluster_size, self.embed_avg])

    @torch.no_grad()
    def ema_update_(self, x: Tensor, codes: Tensor) -> None:
        """One EMA step of cluster sizes and sums from vectors `x [N, D]` assigned to `codes [N]`."""
        onehot = F.one_hot(codes, self.bins).to(x.dtype)  # [N, bins]
        counts = _all_reduce_sum_(onehot.sum(0))  # [bins]
        sums = _all_reduce_sum_(onehot.t() @ x)  # [bins, D]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.bins * self.epsilon) * n  # Laplace smoothing
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`[..., D]` -> (codewords `[..., D]`, codes `[...]`); in training also k-means init, code refresh, EMA."""
        flat = x.reshape(-1, self.dim).detach().float()  # [N, D]
        if self.training:
            self.init_(flat)
        codes = self.quantize(flat)  # [N]
        q = self.decode(codes)  # [N, D] the codewords chosen, before this batch moves the codebook
        if self.training:
            self.expire_codes_(flat)  # EnCodec's order: refresh, then the EMA step with this batch's assignment
            self.ema_update_(flat, codes)
        return q.view(x.shape).to(x.dtype), codes.view(x.shape[:-1])


# ---------------------------------------------------------------------------------- one level


class VectorQuantizer(nn.Module):
    """One quantization level: `[B, D, S]` <-> codes `[B, S]` (EnCodec's `VectorQuantization`)."""

    def __init__(self, dim: int, bins: int, **codebook_kwargs: float | bool | int):
        super().__init__()
        self.codebook = EuclideanCodebook(dim, bins, **codebook_kwargs)

    def encode(self, z: Tensor) -> Tensor:
        return self.codebook.encode(z.transpose(1, 2))  # [B, D, S] -> [B, S, D] -> [B, S]

    def decode(self, codes: Tensor) -> Tensor:
        return self.codebook.decode(codes).transpose(1, 2)  # [B, S] -> [B, S, D] -> [B, D, S]

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`[B, D, S]` -> (codewords `[B, D, S]`, no gradient; codes `[B, S]`; commitment loss, scalar).

        The commitment loss pulls the input towards its (fixed) codeword; the codebook itself learns by
        EMA, so no loss moves it.
        """
        q, codes = self.codebook(z.transpose(1, 2))  # [B, S, D], [B, S]
        q = q.transpose(1, 2).detach()  # [B, D, S]
        commit = F.mse_loss(z, q) if self.training else z.new_zeros(())
        return q, codes, commit


# --------------------------------------------------------------------------------- the stack


class ResidualVQ(nn.Module):
    """Residual VQ (SoundStream alg. 1). Args: dim=D, n_q=K levels, bins=codebook size (keyword-only).

    Args:
        quantizer_dropout: in training, the probability that a batch is quantized with a random number
            of levels n ~ U{1..K} instead of K (SoundStream's quantizer dropout), so that every prefix
            of levels decodes to usable audio and one model serves 1..K levels (bitrates).
        decay, epsilon, kmeans_init, kmeans_iters, dead_code_threshold: see `EuclideanCodebook`.
    """

    def __init__(self, *, dim: int, n_q: int = 8, bins: int = 1024, quantizer_dropout: float = 0.0,
                 decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 50,
                 dead_code_threshold: float = 0.1):
        super().__init__()
        if n_q < 1 or bins < 2 or dim < 1:
            raise ValueError(f"ResidualVQ needs n_q >= 1, bins >= 2, dim >= 1; got n_q={n_q}, bins={bins}, dim={dim}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.dim, self.n_q, self.bins, self.quantizer_dropout = dim, n_q, bins, quantizer_dropout
        self.layers = nn.ModuleList(
            VectorQuantizer(dim, bins, decay=decay, epsilon=epsilon, kmeans_init=kmeans_init,
                            kmeans_iters=kmeans_iters, dead_code_threshold=dead_code_threshold)
            for _ in range(n_q))

    def _levels(self, n_q: int | None) -> int:
        n = self.n_q if n_q is None else int(n_q)
        if not 1 <= n <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
        return n

    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """`[B, D, S]` -> codes `[B, n_q, S]` (default: all K levels)."""
        residual, codes = z, []
        for layer in self.layers[: self._levels(n_q)]:
            c = layer.encode(residual)  # [B, S]
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes `[B, n, S]` (any 1 <= n <= K levels) -> `[B, D, S]`, the sum of their codewords."""
        self._levels(codes.shape[1])
        out = self.layers[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            out = out + self.layers[k].decode(codes[:, k])
        return out

    @torch.no_grad()
    def initialize_(self, z: Tensor) -> None:
        """k-means initialise every level from latents `z [B, D, S]` (or `[N, D]`), level k on the residual
        the levels before it leave. Levels already initialised keep their codebooks.

        Training loops call this with several batches' worth of latents, which gives a better start
        than the lazy initialisation on the first batch (fewer vectors than codes at small batch sizes).
        """
        x = z.transpose(1, 2).reshape(-1, self.dim) if z.dim() == 3 else z  # [N, D]
        x = x.float()
        for layer in self.layers:
            layer.codebook.init_(x)
            x = x - layer.codebook.decode(layer.codebook.quantize(x))

    def codebooks(self) -> Tensor:
        """Every level's codewords stacked: `[K, bins, D]` (all that decoding and encoding need)."""
        return torch.stack([layer.codebook.embed for layer in self.layers])

    @torch.no_grad()
    def load_codebooks_(self, embeds: Tensor) -> None:
        """Set the codewords from `[K, bins, D]` (an inference export without the EMA statistics).

        The levels count as initialised and their EMA state restarts from these codewords with the
        average usage, so further training continues from them instead of re-running k-means.
        """
        if tuple(embeds.shape) != (self.n_q, self.bins, self.dim):
            raise ValueError(f"codebooks must have shape [{self.n_q}, {self.bins}, {self.dim}] (levels, bins, dim), "
                             f"got {list(embeds.shape)}")
        for layer, embed in zip(self.layers, embeds):
            cb = layer.codebook
            cb.embed.copy_(embed.to(cb.embed.dtype))
            cb.cluster_size.fill_(1.0)
            cb.embed_avg.copy_(cb.embed)
            cb.inited.fill_(1.0)

    def sample_levels(self) -> int:
        """Levels for one training batch under quantizer dropout (draws from the global torch RNG)."""
        if self.quantizer_dropout > 0 and float(torch.rand(())) < self.quantizer_dropout:
            return int(torch.randint(1, self.n_q + 1, ()))
        return self.n_q

    def forward(self, z: Tensor, n_q: int | None = None) -> QuantizedResult:
        """`[B, D, S]` -> `QuantizedResult`. In training, `n_q=None` applies quantizer dropout."""
        if n_q is None and self.training:
            n = self.sample_levels()
        else:
            n = self._levels(n_q)
        residual = z
        total = torch.zeros_like(z)
        codes, losses, perplexity = [], [], []
        for layer in self.layers[:n]:
            q, c, commit = layer(residual)  # q is detached: level k's commitment reaches z through residual
            residual = residual - q
            total = total + q
            codes.append(c)
            losses.append(commit)
            perplexity.append(_perplexity(c, self.bins))
        if self.training:
            total = z + (total - z).detach()  # straight-through estimator for the whole stack
        return QuantizedResult(quantized=total, codes=torch.stack(codes, dim=1), commit_loss=torch.stack(losses).mean(),
                               n_q=n, perplexity=torch.stack(perplexity))


def _perplexity(codes: Tensor, bins: int) -> Tensor:
    """exp(entropy) of the code histogram: 1 = one code used, `bins` = all used equally."""
    p = torch.bincount(codes.reshape(-1), minlength=bins).float()
    p = p / p.sum()
    return torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())
