"""Conditioning tokens: a CLAP embedding quantized by a residual VQ into Q tokens (MuLan tokens, MusicLM).

MusicLM quantizes the 128-d MuLan audio embedding with an RVQ of 12 levels x 1024 codes and feeds the
12 tokens to its LMs as a prefix; at inference the MuLan *text* embedding goes through the same RVQ.
audiocraft's `CLAPEmbeddingConditioner` (quantize: true, n_q 12, bins 1024) does the same with CLAP.
We do it with our 512-d CLAP, but quantize in a 64-d space behind linear projections:

    emb [B, 512] --L2 normalise--> project_in --> z [B, 64] --ResidualVQ (12 x 1024)--> codes [B, 12]
    codes --codewords summed--> [B, 64] --project_out--> --L2 normalise--> reconstruction [B, 512]

Why the projection: 12 x 1024 codewords of 512 values are 12.6 MB in fp16, about half the token
backend's 28 MB budget; at 64-d they are 1.57 MB (+ 0.13 MB of projections, 1.7 MB in all). The
projections start as PCA of the training embeddings (`init_from_data_`): CLAP embeddings of a corpus
lie near a low-dimensional subspace, so 64 principal directions keep most of their variance, and
training then moves both projections to minimise the cosine reconstruction error.

The RVQ is the codec's (`soundsmith.codecs.rvq.ResidualVQ`: EMA codebooks, k-means init, dead-code
refresh, straight-through estimator); here it quantizes one vector per clip (`[B, 64, 1]`).
`save_pretrained` writes only the codewords (`ResidualVQ.codebooks()`), not the EMA statistics: the
export is for inference; training resumes from training checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from soundsmith.codecs.rvq import ResidualVQ
from soundsmith.core.weights import config_from_dict
from torch import Tensor, nn

MODEL_TYPE = "soundsmith-cond-rvq"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ConditioningQuantizerConfig:
    embed_dim: int = 512  # the CLAP joint space
    codebook_dim: int = 64  # quantization space behind the projections (see the module docstring)
    n_levels: int = 12  # Q tokens per embedding (MusicLM / audiocraft: 12)
    codebook_size: int = 1024  # codes per level (MusicLM / audiocraft: 1024)
    decay: float = 0.99  # EMA decay of the codebooks
    kmeans_iters: int = 20  # k-means iterations per level at initialisation
    dead_code_threshold: float = 0.1  # refresh codes used less than this share of the average
    clap_fingerprint: str | None = None  # weights fingerprint of the CLAP whose embeddings it was trained on
    clap: str | None = None  # that CLAP's folder when trained (informational)

    def __post_init__(self) -> None:
        if min(self.embed_dim, self.codebook_dim, self.n_levels) < 1 or self.codebook_size < 2:
            raise ValueError(f"ConditioningQuantizerConfig needs embed_dim, codebook_dim, n_levels >= 1 and "
                             f"codebook_size >= 2; got {self.embed_dim}, {self.codebook_dim}, {self.n_levels}, "
                             f"{self.codebook_size}")
        if self.codebook_dim > self.embed_dim:
            raise ValueError(f"codebook_dim must be <= embed_dim ({self.embed_dim}), got {self.codebook_dim}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ConditioningQuantizerConfig:
        return config_from_dict(cls, data, where, ignore=("model_type",), metadata_prefix=None)

    def size_bytes(self, bytes_per_value: int = 2) -> int:
        """Exported size: codewords + both projections (weights and biases), fp16 by default."""
        codebooks = self.n_levels * self.codebook_size * self.codebook_dim
        projections = 2 * self.embed_dim * self.codebook_dim + self.embed_dim + self.codebook_dim
        return (codebooks + projections) * bytes_per_value


@dataclass
class ConditioningQuantizerOutput:
    """What `ConditioningQuantizer.forward` returns."""

    reconstruction: Tensor  # [B, E] L2-normalised
    codes: Tensor  # [B, Q] int64
    commit_loss: Tensor  # scalar (0 in eval mode)
    perplexity: Tensor  # [Q] code usage per level in this batch


class ConditioningQuantizer(nn.Module):
    """Residual VQ over CLAP embeddings: `tokenize(emb [B, 512]) -> [B, Q]`, `embed(tokens) -> [B, 512]`.

    Args:
        config: sizes and RVQ settings (default: 12 levels x 1024 codes of 64 values behind 512 <-> 64
            projections, 1.7 MB in fp16).
    """

    def __init__(self, config: ConditioningQuantizerConfig | None = None):
        super().__init__()
        self.config = cfg = config or ConditioningQuantizerConfig()
        self.project_in = nn.Linear(cfg.embed_dim, cfg.codebook_dim)
        self.rvq = ResidualVQ(dim=cfg.codebook_dim, n_q=cfg.n_levels, bins=cfg.codebook_size, decay=cfg.decay,
                              kmeans_init=True, kmeans_iters=cfg.kmeans_iters,
                              dead_code_threshold=cfg.dead_code_threshold)
        self.project_out = nn.Linear(cfg.codebook_dim, cfg.embed_dim)

    @property
    def n_levels(self) -> int:
        return self.config.n_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # --------------------------------------------------------------------------------- inference

    def _check(self, emb: Tensor) -> Tensor:
        if emb.dim() != 2 or emb.shape[-1] != self.config.embed_dim:
            raise ValueError(f"embeddings must be [B, {self.config.embed_dim}], got {list(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or inf")
        return F.normalize(emb.to(self.project_in.weight.dtype), dim=-1)

    @torch.no_grad()
    def tokenize(self, emb: Tensor, n_levels: int | None = None) -> Tensor:
        """CLAP embeddings `[B, E]` (audio or text; normalised here) -> LongTensor `[B, Q]` (Q = n_levels)."""
        z = self.project_in(self._check(emb))[:, :, None]  # [B, D, 1]
        return self.rvq.encode(z, n_levels)[:, :, 0]  # [B, Q]

    @torch.no_grad()
    def embed(self, tokens: Tensor) -> Tensor:
        """Tokens `[B, q]` (the first q <= Q levels) -> L2-normalised reconstruction `[B, E]`."""
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.n_levels:
            raise ValueError(f"tokens must be [B, q] with 1 <= q <= {self.n_levels}, got {list(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"tokens must be in [0, {self.codebook_size - 1}], got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        z = self.rvq.decode(tokens.long()[:, :, None])[:, :, 0]  # [B, D]
        return F.normalize(self.project_out(z), dim=-1)

    # ---------------------------------------------------------------------------------- training

    def forward(self, emb: Tensor, n_levels: int | None = None) -> ConditioningQuantizerOutput:
        """`[B, E]` -> reconstruction, codes, commitment loss (training: EMA codebooks, straight-through)."""
        z = self.project_in(self._check(emb))[:, :, None]  # [B, D, 1]
        out = self.rvq(z, n_levels if n_levels is not None else self.n_levels)
        recon = F.normalize(self.project_out(out.quantized[:, :, 0]), dim=-1)  # [B, E]
        return ConditioningQuantizerOutput(recon, out.codes[:, :, 0], out.commit_loss, out.perplexity)

    @torch.no_grad()
    def init_from_data_(self, emb: Tensor) -> None:
        """PCA-initialise the projections from embeddings `[N, E]`, then k-means-initialise every RVQ level
        on the projected training set (level k on what levels < k leave). Draws from torch's global RNG."""
        x = F.normalize(emb.float(), dim=-1)
        mean = x.mean(0)  # [E]
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # rows: principal directions, by variance
        d, e = self.config.codebook_dim, self.config.embed_dim
        k = min(d, vh.shape[0])
        # fewer embeddings than d (tiny runs): complete the basis with random orthonormal directions
        basis, _ = torch.linalg.qr(torch.cat([vh[:k].T, torch.randn(e, d - k)], dim=1))  # [E, d], spans vh[:k] first
        basis[:, :k] = vh[:k].T  # keep the PCA signs
        self.project_in.weight.copy_(basis.T)  # [d, E]
        self.project_in.bias.copy_(-(basis.T @ mean))
        self.project_out.weight.copy_(basis)  # [E, d]
        self.project_out.bias.copy_(mean)
        self.rvq.initialize_(self.project_in(x))  # [N, d]

    # ----------------------------------------------------------------------------------- folders

    def exported_state(self) -> dict[str, Tensor]:
        """The tensors `save_pretrained` writes: projections and `codebooks [Q, bins, D]`."""
        tensors = {f"project_in.{k}": v for k, v in self.project_in.state_dict().items()}
        tensors.update({f"project_out.{k}": v for k, v in self.project_out.state_dict().items()})
        tensors["codebooks"] = self.rvq.codebooks()
        return tensors

    def fingerprint(self) -> str:
        """A short hash of the exported weights rounded to fp16 (the same before and after an fp16 export),
        for the LMs to record which quantizer their conditioning tokens came from."""
        return _fingerprint(self.exported_state())

    def check_clap(self, clap_fingerprint: str, where: str = "conditioning quantizer") -> None:
        """Refuse a CLAP other than the one this quantizer was trained on (its codebooks
        live in that CLAP's embedding space, so a new CLAP means retraining the conditioning RVQ)."""
        expected = self.config.clap_fingerprint
        if expected is not None and clap_fingerprint != expected:
            raise ValueError(f"{where}: trained on the CLAP with fingerprint {expected}, but the CLAP given has "
                             f"{clap_fingerprint}; retrain it with `soundsmith train cond-rvq --clap ...`")

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Write config.json + model.safetensors (projections + `codebooks [Q, bins, D]`, in `dtype`)."""
        from soundsmith.core.files import write_json
        from soundsmith.core.weights import save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.to(dtype) for k, v in self.exported_state().items()}, folder / WEIGHTS_NAME,
                         metadata={"format": "pt", "model_type": MODEL_TYPE})
        write_json(folder / "config.json", self.config.to_dict())
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, clap_fingerprint: str | None = None
                        ) -> ConditioningQuantizer:
        """Load a folder written by `save_pretrained` (float32, CPU, eval mode). With `clap_fingerprint`,
        refuse it unless it was trained on that CLAP."""
        from soundsmith.core.files import read_config
        from soundsmith.core.weights import check_state_dict, read_state_dict

        folder = Path(folder)
        data = read_config(folder)
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{folder / 'config.json'}: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}")
        model = cls(ConditioningQuantizerConfig.from_dict(data, str(folder / "config.json")))
        state = read_state_dict(folder / WEIGHTS_NAME)
        check_state_dict(model.exported_state(), state, folder / WEIGHTS_NAME, what="conditioning quantizer")
        model.project_in.load_state_dict({k.split(".", 1)[1]: state[k].float() for k in state if k.startswith("project_in.")})
        model.project_out.load_state_dict({k.split(".", 1)[1]: state[k].float()
                                           for k in state if k.startswith("project_out.")})
        model.rvq.load_codebooks_(state["codebooks"].float())
        if clap_fingerprint is not None:
            model.check_clap(clap_fingerprint, str(folder))
        return model.eval()


def _fingerprint(tensors: dict[str, Tensor]) -> str:
    """`pipelines.base.weights_fingerprint`'s hash (fp16-rounded, sorted by name) over a dict of tensors."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
