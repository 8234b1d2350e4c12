"""The token backend's three decoder-only language models (MusicLM / AudioLM hierarchy).

    semantic LM  [cond Q][SEM] s_1 ... s_N                                  -> semantic tokens (~25 Hz)
    coarse LM    [cond Q][SEM] s_1 ... s_N [AC] a(1,1) a(1,2) a(1,3) a(2,1) ... -> first `n_coarse` codec
                 levels, flattened frame by frame (AudioLM's row-major order, one vocabulary per level), or
                 in MusicGen's delay pattern (`coarse_pattern="delay"`, below): one position per frame
    fine LM      one position per codec frame: the frame's coarse codes in, its `n_fine` remaining codes out,
                 all levels of a step at once (parallel heads) or MusicGen's delay pattern (level j of
                 frame t is predicted at position t + j, after levels < j of that frame are known)

Conditioning tokens (the CLAP embedding through the conditioning RVQ, `soundsmith.gen.cond_tokens`) are a
prefix; classifier-free guidance swaps the prefix for "null" tokens (or a negative prompt's tokens) in a
doubled batch. Every stage samples with its own temperature / top-k / top-p, one torch.Generator per output.
Past a stage's training window (`config.window`) generation slides: the last `context_fraction` of what is
there becomes the prompt of the next window (MusicLM's long-generation recipe).

Why a transformer of our own and not transformers' `LlamaForCausalLM` (both RoPE + SDPA + pre-norm): decoding
is faster here (benchmarks/token_speed.py, d256 x 4 layers, 1 thread, CPU time: 297 tokens/s at batch 1 and
1156 at batch 8, against 182 / 801 for `LlamaForCausalLM.generate` and 180 / 1003 for transformers' MusicGen
decoder of the same size; one raw cached step ~1.4x cheaper than Llama's) thanks to a preallocated cache and
one fused QKV projection instead of `DynamicCache` and generate()'s per-step bookkeeping; and our token
layouts need per-vocabulary, weight-tied output heads and factorised embeddings that a single-vocabulary
`LlamaForCausalLM` does not have.
The block is nanoGPT's (pre-norm LayerNorm without bias, GELU MLP) with rotary positions as in Llama;
LayerNorm rather than RMSNorm because torch's CPU LayerNorm is one fused kernel (~5x faster at one token).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from soundsmith.core.weights import config_from_dict
from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
IGNORE = -100  # target value skipped by the loss (padding, positions with nothing to predict)
STAGES = ("semantic", "coarse", "fine")
FINE_PATTERNS = ("delay", "parallel")
COARSE_PATTERNS = ("flat", "delay")


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TokenLMConfig:
    """Size of the transformer plus the token layout of one stage.

    Windows are the training crop, in semantic tokens (semantic stage) or codec frames (coarse, fine);
    generation past them slides (see the module docstring).
    """

    stage: str = "semantic"  # "semantic", "coarse" or "fine"
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 1024  # GELU MLP width (nanoGPT: 4 x d_model)
    dropout: float = 0.1  # attention, residual and embedding dropout in training (MusicLM: 0.1)
    rope_theta: float = 10_000.0
    # conditioning tokens (semantic and coarse stages): Q levels of the conditioning RVQ
    cond_levels: int = 12
    cond_codebook_size: int = 1024
    # embedding rows of this width, projected to d_model (ALBERT's factorisation): 12 x 1025 conditioning
    # codes cost 0.8 M weights at 64 instead of 3.1 M at 256, most of a 28 MB budget for three LMs
    cond_embed_dim: int = 64
    semantic_vocab: int = 1024  # k-means clusters
    n_coarse: int = 3  # codec levels of the coarse stage; the fine stage predicts the next n_fine
    n_fine: int = 5
    acoustic_codebook_size: int = 1024
    acoustic_embed_dim: int = 0  # 0: d_model (no factorisation)
    fine_pattern: str = "delay"  # "delay" (MusicGen) or "parallel" heads
    # coarse stage: "flat" samples the n_coarse codes of a frame one after another (n_coarse steps per frame);
    # "delay" samples level j of frame t at position t + j, all levels of a position at once (frames + n_coarse - 1
    # steps, MusicGen's pattern). Why both: flat is AudioLM's exact factorisation; delay is ~n_coarse times fewer
    # decoding steps, what the token backend's speed target needs on a CPU (benchmarks/token_speed.py)
    coarse_pattern: str = "flat"
    # coarse stage: each acoustic position also adds the embedding of the semantic token of the frame it
    # predicts (time-aligned, as SoundStorm conditions on semantic tokens); False = AudioLM's prefix alone.
    # Measured why (runs of models/README.md, "Token model v3"): fed the real semantic tokens of test clips,
    # the prefix-only coarse LM kept under half the label accuracy the codec itself keeps; it has to find
    # frame t's token at an offset that grows with t, which a 4-layer model trained for minutes does not learn
    aligned_semantic: bool = False
    frames_per_semantic: int = 2  # codec frames per semantic token (50 Hz / 25 Hz)
    # semantic stage: width of the tempo features (gen/tempo.py, 16) added to the [SEM] token through a linear map,
    # so the plan can follow a requested tempo; 0 = no tempo input (the prefix alone)
    tempo_dim: int = 0
    # semantic and coarse stages: width of the per-frame beat features (gen/tempo.py beat_features, 9) added,
    # through a linear map, at every position that predicts a semantic token or an acoustic frame, so the plan and
    # the codes follow a beat grid (the requested tempo); 0 = none
    beat_dim: int = 0
    window: int = 125  # training crop: semantic tokens (semantic stage) or codec frames (coarse, fine)
    frame_rate: float = 25.0  # tokens (semantic stage) or codec frames per second, for lengths in seconds
    trained_with: dict[str, str] = field(default_factory=dict)  # fingerprints of the parts the data came from

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"TokenLMConfig.stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.fine_pattern not in FINE_PATTERNS:
            raise ValueError(f"TokenLMConfig.fine_pattern must be one of {', '.join(FINE_PATTERNS)}, "
                             f"got {self.fine_pattern!r}")
        if self.coarse_pattern not in COARSE_PATTERNS:
            raise ValueError(f"TokenLMConfig.coarse_pattern must be one of {', '.join(COARSE_PATTERNS)}, "
                             f"got {self.coarse_pattern!r}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "cond_levels", "cond_codebook_size", "cond_embed_dim",
                     "semantic_vocab", "n_coarse", "acoustic_codebook_size", "frames_per_semantic", "window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TokenLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_fine < (1 if self.stage == "fine" else 0):
            raise ValueError(f"TokenLMConfig.n_fine must be >= 1 for the fine stage, got {self.n_fine}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"TokenLMConfig.d_model ({self.d_model}) must split into n_heads ({self.n_heads}) "
                             "heads of an even width (rotary positions rotate pairs)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TokenLMConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.stage == "coarse" and self.window % self.frames_per_semantic:
            raise ValueError(f"TokenLMConfig.window ({self.window} frames) must be a multiple of frames_per_semantic "
                             f"({self.frames_per_semantic}) for the coarse stage")
        if not self.frame_rate > 0:
            raise ValueError(f"TokenLMConfig.frame_rate must be > 0, got {self.frame_rate}")
        if self.tempo_dim < 0 or (self.tempo_dim and self.stage != "semantic"):
            raise ValueError(f"TokenLMConfig.tempo_dim must be >= 0, and 0 outside the semantic stage; got "
                             f"{self.tempo_dim} for the {self.stage} stage")
        if self.beat_dim < 0 or (self.beat_dim and self.stage == "fine"):
            raise ValueError(f"TokenLMConfig.beat_dim must be >= 0, and 0 for the fine stage; got "
                             f"{self.beat_dim} for the {self.stage} stage")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_delay(self) -> int:
        """Extra positions the delay pattern adds after the last frame (0 without one)."""
        if self.stage == "fine" and self.fine_pattern == "delay":
            return self.n_fine - 1
        if self.stage == "coarse" and self.coarse_pattern == "delay":
            return self.n_coarse - 1
        return 0

    @property
    def max_positions(self) -> int:
        """Sequence length of one full window (the rotary table's size)."""
        if self.stage == "semantic":
            return self.cond_levels + 1 + self.window
        if self.stage == "coarse":
            prefix = self.cond_levels + 1 + self.window // self.frames_per_semantic
            if self.coarse_pattern == "delay":  # one position per frame, plus the delay's tail
                return prefix + self.window + self.max_delay
            return prefix + 1 + self.window * self.n_coarse  # [AC], then one position per code
        return self.window + self.max_delay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "TokenLMConfig") -> TokenLMConfig:
        """An unknown key is an error naming it (keys starting with `_` are metadata)."""
        return config_from_dict(cls, data, where, wrap_errors=True)


@dataclass(frozen=True)
class SamplingParams:
    """How one stage draws its tokens. temperature > 0; top_k >= 1 or None (off); top_p in (0, 1]."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)


@dataclass(frozen=True)
class Branch:
    """One half (or third) of a guidance batch: the prefix it reads (the null / negative prefix, or the prompt's)
    and whether it reads the beat grid."""

    null: bool
    beat: bool


def guidance_branches(guidance_scale: float, has_beat: bool, beat_guidance: float | None = None,
                      beat_in_null: bool = False) -> tuple[list[Branch], list[float]]:
    """The branches a stage runs and the weights their logits are summed with.

    Without `beat_guidance` (or without a grid): classifier-free guidance over [null, prompt] with weights
    [1 - g, g]; the prompt branch reads the grid, the null branch reads it when `beat_in_null` (`guide_beat` off
    in the semantic stage, always in the coarse stage). With `beat_guidance` b and a grid, the grid is a condition
    of its own (compositional guidance, Liu et al. 2022): [null, prompt, prompt + grid] with weights
    [1 - g, g - b, b], i.e. u + g (c - u) + b (c_grid - c); without prompt guidance (g = 1) [prompt, prompt + grid]
    with [1 - b, b]. Each branch stays in the distribution the LM was trained on, however strong the push."""
    g = float(guidance_scale)
    if beat_guidance is None or not has_beat:
        if g == 1.0:
            return [Branch(False, has_beat)], [1.0]
        return [Branch(True, has_beat and beat_in_null), Branch(False, has_beat)], [1.0 - g, g]
    b = float(beat_guidance)
    if g == 1.0:
        return [Branch(False, False), Branch(False, True)], [1.0 - b, b]
    return [Branch(True, False), Branch(False, False), Branch(False, True)], [1.0 - g, g - b, b]


def check_sampling(temperature: Any, top_k: Any, top_p: Any,
                   names: tuple[str, str, str] = ("temperature", "top_k", "top_p")) -> None:
    """One-line ValueErrors for sampling settings out of range, naming the argument (`names`)."""
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not ok(temperature) or temperature <= 0:
        raise ValueError(f"{names[0]} must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{names[1]} must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if not ok(top_p) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"{names[2]} must be a number in (0, 1], got {top_p!r}")


# ------------------------------------------------------------------------------------------ embeddings


class CodebookEmbedding(nn.Module):
    """Embeddings of `levels` codebooks of `size` codes, one table; code `size` of a level is its "none"
    token (a conditioning prefix dropped for guidance, an empty slot of the delay pattern).

    Rows may be narrower than the model (`dim` < d_model) and projected up (ALBERT). Output heads are
    tied to the rows: logits = (h @ proj) @ rows^T, the transpose of the input path.
    """

    def __init__(self, levels: int, size: int, d_model: int, dim: int = 0):
        super().__init__()
        self.levels, self.size = levels, size
        dim = dim or d_model
        self.table = nn.Embedding(levels * (size + 1), dim)
        self.proj = nn.Linear(dim, d_model, bias=False) if dim != d_model else None
        self.register_buffer("offsets", torch.arange(levels) * (size + 1), persistent=False)

    @property
    def none(self) -> int:
        return self.size

    def forward(self, codes: Tensor, first_level: int = 0) -> Tensor:
        """codes `[..., L]` (the last axis runs over levels first_level..first_level+L-1) -> `[..., L, D]`."""
        ids = codes + self.offsets[first_level:first_level + codes.shape[-1]]
        x = self.table(ids)
        return self.proj(x) if self.proj is not None else x

    def level(self, codes: Tensor, level: int) -> Tensor:
        """codes `[...]` of one level -> `[..., D]`."""
        x = self.table(codes + level * (self.size + 1))
        return self.proj(x) if self.proj is not None else x

    def _rows(self) -> Tensor:
        return self.table.weight.view(self.levels, self.size + 1, -1)[:, : self.size]  # [levels, V, dim]

    def logits(self, h: Tensor, first_level: int = 0) -> Tensor:
        """h `[..., L, D]` (one hidden state per level) -> `[..., L, V]` with the tied heads."""
        if self.proj is not None:
            h = h @ self.proj.weight  # [..., L, dim]
        rows = self._rows()[first_level:first_level + h.shape[-2]]  # [L, V, dim]
        return torch.einsum("...ld,lvd->...lv", h, rows)

    def level_logits(self, h: Tensor, level: int) -> Tensor:
        """h `[B, D]` -> `[B, V]`: the tied head of one level."""
        if self.proj is not None:
            h = h @ self.proj.weight
        start = level * (self.size + 1)
        return h @ self.table.weight[start:start + self.size].T


# ------------------------------------------------------------------------------------------ transformer


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin `[length, head_dim]` for rotate-half rotary embeddings (Llama's layout)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [Dh / 2]
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)  # [S, Dh / 2]
    angles = torch.cat([angles, angles], dim=-1)  # [S, Dh]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x `[B, H, S, Dh]`, cos/sin `[S, Dh]` -> rotated x."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of every layer, preallocated: `[n_layers, B, H, max_len, Dh]` each.

    A fixed buffer written in place, not a list grown by concatenation (transformers' DynamicCache): one
    decoding step then allocates nothing for the cache.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write k, v `[B, H, S, Dh]` at positions start..start+S; return all keys/values so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache of {self.max_len} positions is full (writing up to {end})")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions, SDPA and an optional KV cache."""

    def __init__(self, cfg: TokenLMConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = cfg.n_heads, cfg.head_dim, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, S, Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask, causal = None, s > 1
        if cache is not None:
            k, v = cache.update(layer, k, v, start)  # [B, H, start + S, Dh]
            if s > 1 and start > 0:  # a chunk after cached positions: causal within the chunk, all before it
                mask = torch.ones(s, start + s, dtype=torch.bool, device=x.device).tril(start)
                causal = False
            elif s == 1:
                causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # [B, H, S, Dh]
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TokenLMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.out = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, layer: int, start: int) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, cache, layer, start))
        return x + self.drop(self.out(F.gelu(self.fc(self.norm2(x)), approximate="tanh")))


@dataclass
class LMOutput:
    """What a stage's `forward` returns: logits `[..., V]` and the matching targets `[...]` (IGNORE = skip)."""

    logits: Tensor
    targets: Tensor

    def loss(self) -> Tensor:
        return F.cross_entropy(self.logits.flatten(0, -2).float(), self.targets.flatten(), ignore_index=IGNORE)

    def level_losses(self) -> list[float]:
        """Cross-entropy per codec level for acoustic stages (logits `[B, S, K, V]`); [] for the semantic stage.
        Levels are not equally hard (each residual level is noisier), so one mean hides where a model stands."""
        if self.logits.dim() != 4:
            return []
        return [F.cross_entropy(self.logits[:, :, j].flatten(0, 1).float(), self.targets[:, :, j].flatten(),
                                ignore_index=IGNORE).item() for j in range(self.logits.shape[2])]

    def accuracy(self) -> float:
        keep = self.targets != IGNORE
        if not keep.any():
            return 0.0
        return (self.logits.argmax(-1)[keep] == self.targets[keep]).float().mean().item()


# -------------------------------------------------------------------------------------------- the base


class TokenLM(nn.Module):
    """The shared decoder (blocks, norm, rotary tables, cache, save/load); each stage adds its embeddings,
    its `forward(...) -> LMOutput` (training) and its `generate(...)`."""

    stage: ClassVar[str] = ""
    SEM, AC = 0, 1  # special tokens: start of the semantic segment, start of the acoustic segment

    def __init__(self, config: TokenLMConfig):
        super().__init__()
        if config.stage != self.stage:
            raise ValueError(f"{type(self).__name__} needs a config with stage={self.stage!r}, got {config.stage!r}")
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)
        cos, sin = rotary_tables(config.max_positions, config.head_dim, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _init_weights(self) -> None:
        """nanoGPT's: N(0, 0.02) everywhere, residual output projections scaled by 1 / sqrt(2 * layers)."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            std = 0.02 / math.sqrt(2 * self.config.n_layers) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
            nn.init.normal_(p, 0.0, std)

    # ------------------------------------------------------------------------------------ decoder

    def run(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        """Embeddings `[B, S, D]` at positions start..start+S -> final hidden states `[B, S, D]`."""
        end = start + x.shape[1]
        if end > self.cos.shape[0]:
            raise ValueError(f"sequence of {end} positions exceeds this {self.stage} LM's window of "
                             f"{self.cos.shape[0]}")
        cos, sin = self.cos[start:end].to(x.dtype), self.sin[start:end].to(x.dtype)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, start)
        return self.norm(x)

    def new_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, c.n_heads, length, c.head_dim, device=self.cos.device,
                       dtype=self.norm.weight.dtype)

    @property
    def device(self) -> torch.device:
        return self.cos.device

    # ---------------------------------------------------------------------------------------- I/O

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors (floats cast to `dtype`, e.g. torch.float16 to ship)."""
        from soundsmith.core.files import write_json
        from soundsmith.core.weights import save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                 for k, v in self.state_dict().items()}
        save_safetensors(state, folder / WEIGHTS_NAME)
        write_json(folder / CONFIG_NAME, {"_class_name": type(self).__name__, **self.config.to_dict()})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TokenLM:
        """Load a folder written by `save_pretrained` (float32, CPU, eval mode). Called on `TokenLM` it
        builds the stage named in config.json; on a stage class the folder must hold that stage."""
        from soundsmith.core.files import read_config
        from soundsmith.core.weights import find_weights, load_strict, read_state_dict

        folder = Path(folder)
        raw = read_config(folder)
        kind = raw.get("_class_name")
        if kind not in LM_CLASSES:
            raise ValueError(f"{folder / CONFIG_NAME}: _class_name is {kind!r}, expected one of {', '.join(LM_CLASSES)}")
        model_cls = LM_CLASSES[kind]
        if cls is not TokenLM and model_cls is not cls:
            raise ValueError(f"{folder / CONFIG_NAME}: holds a {kind}, not a {cls.__name__}")
        model = model_cls(TokenLMConfig.from_dict(raw, str(folder / CONFIG_NAME)))
        weights = find_weights(folder, (WEIGHTS_NAME,))
        load_strict(model, read_state_dict(weights), weights, what=kind)
        return model.float().eval()

    # ---------------------------------------------------------------------------------- sampling

    def _cond_prefix(self, cond: Tensor) -> Tensor:
        """Conditioning codes `[B, Q]` (code `cond_codebook_size` = none) -> `[B, Q, D]`."""
        q = self.config.cond_levels
        if cond.dim() != 2 or cond.shape[1] != q:
            raise ValueError(f"conditioning tokens must be shaped [batch, {q}], got {list(cond.shape)}")
        return self.cond(cond)

    def null_cond(self, batch: int) -> Tensor:
        """The "no condition" prefix `[B, Q]` that classifier-free guidance and condition dropout use."""
        return torch.full((batch, self.config.cond_levels), self.config.cond_codebook_size, dtype=torch.long,
                          device=self.device)

    def _special(self, index: int, batch: int) -> Tensor:
        return self.specials.weight[index].expand(batch, 1, -1)  # [B, 1, D]

    def _beat_input(self, beat: Tensor, frames: Tensor, batch: int) -> Tensor:
        """The beat features `beat` `[B, F, beat_dim]` of `frames` `[P]` (clamped to the last one) through the
        stage's beat map -> `[B, P, D]`."""
        if beat.dim() != 3 or beat.shape[0] != batch or beat.shape[2] != self.config.beat_dim:
            raise ValueError(f"beat features must be shaped [{batch}, frames, {self.config.beat_dim}], got "
                             f"{list(beat.shape)}")
        return self.beat(beat[:, frames.to(beat.device).clamp(max=beat.shape[1] - 1)].to(self.beat.weight.dtype))


# ---------------------------------------------------------------------------------- delay pattern


def delay_slots(codes: Tensor, delays: Tensor, positions: int, none: int) -> Tensor:
    """codes `[B, K, S]` -> slots `[B, positions, K]`: slot (p, j) holds level j of frame p - delays[j], or
    `none` where that frame is outside 0..S-1 (MusicGen's delay pattern; delays all 0 = one frame per slot)."""
    b, k, s = codes.shape
    frame = torch.arange(positions, device=codes.device)[:, None] - delays[None]  # [P, K]
    valid = (frame >= 0) & (frame < s)
    gathered = codes.transpose(1, 2)[:, frame.clamp(0, s - 1), torch.arange(k, device=codes.device)]  # [B, P, K]
    return torch.where(valid, gathered, torch.full_like(gathered, none))


def undelay_slots(slots: Tensor, delays: Sequence[int], frames: int) -> Tensor:
    """The inverse of `delay_slots`: slots `[B, P, K]` -> codes `[B, frames, K]` (frame-major)."""
    index = torch.arange(frames, device=slots.device)
    return torch.stack([slots[:, index + d, j] for j, d in enumerate(delays)], dim=-1)


# ---------------------------------------------------------------------------------------- the stages


class SemanticLM(TokenLM):
    """[cond Q][SEM] s_1 ... s_N: semantic tokens given the conditioning prefix."""

    stage = "semantic"

    def __init__(self, config: TokenLMConfig):
        super().__init__(config)
        c = config
        self.cond = CodebookEmbedding(c.cond_levels, c.cond_codebook_size, c.d_model, c.cond_embed_dim)
        self.specials = nn.Embedding(1, c.d_model)
        self.semantic = CodebookEmbedding(1, c.semantic_vocab, c.d_model)
        self.tempo = nn.Linear(c.tempo_dim, c.d_model, bias=False) if c.tempo_dim else None
        self.beat = nn.Linear(c.beat_dim, c.d_model, bias=False) if c.beat_dim else None
        self._init_weights()
        for extra in (self.tempo, self.beat):  # silent until trained: a tempo or beat input changes nothing at first
            if extra is not None:
                nn.init.zeros_(extra.weight)

    def beat_embedding(self, beat: Tensor | None, first: int, count: int, batch: int) -> Tensor | float:
        """What positions predicting tokens first..first+count-1 add: the beat features of those tokens' frames
        through `beat` (`[B, F, beat_dim]`, frame 0 = token 0 of the sequence; None: no beat) -> `[B, count, D]`,
        or 0.0 without."""
        if beat is None or self.beat is None:
            return 0.0
        return self._beat_input(beat, torch.arange(first, first + count), batch)

    def embed(self, cond: Tensor, semantic: Tensor, tempo: Tensor | None = None, beat: Tensor | None = None
              ) -> Tensor:
        """cond `[B, Q]`, semantic `[B, N]`, tempo features `[B, tempo_dim]` (None: none asked), beat features
        `[B, >= N + 1, beat_dim]` of the sequence's frames (None: none) -> inputs `[B, Q + 1 + N, D]`; the tempo
        enters through the [SEM] token, the beat of token i's frame at the position that predicts token i."""
        b = cond.shape[0]
        start = self._special(self.SEM, b)  # [B, 1, D]
        if tempo is not None and self.tempo is not None:
            if tempo.shape != (b, self.config.tempo_dim):
                raise ValueError(f"tempo features must be shaped [{b}, {self.config.tempo_dim}], got {list(tempo.shape)}")
            start = start + self.tempo(tempo.to(start.dtype))[:, None]
        plan = torch.cat([start, self.semantic(semantic.clamp(min=0)[..., None])[:, :, 0]], dim=1)  # [B, 1 + N, D]
        plan = plan + self.beat_embedding(beat, 0, plan.shape[1], b)
        return torch.cat([self._cond_prefix(cond), plan], dim=1)

    def forward(self, cond: Tensor, semantic: Tensor, tempo: Tensor | None = None, beat: Tensor | None = None
                ) -> LMOutput:
        """Teacher-forced pass: cond `[B, Q]`, semantic `[B, N]` (IGNORE = padding), tempo features `[B, T]` or
        None, beat features `[B, N, beat_dim]` or None -> logits `[B, N, V]`."""
        q = self.config.cond_levels
        h = self.run(self.embed(cond, semantic[:, :-1], tempo, beat))  # position Q + i predicts s_{i+1}
        logits = self.semantic.logits(h[:, q:, None])[:, :, 0]  # [B, N, V]
        return LMOutput(logits, semantic)

    @torch.inference_mode()
    def generate(self, cond: Tensor, length: int, *, prompt: Tensor | None = None, uncond: Tensor | None = None,
                 guidance_scale: float = 1.0, sampling: SamplingParams | None = None,
                 generators: Sequence[torch.Generator] | None = None, context_fraction: float = 0.5,
                 on_step: Callable[[], Any] | None = None, tempo: Tensor | None = None,
                 beat: Tensor | None = None, guide_beat: bool = True, beat_guidance: float | None = None) -> Tensor:
        """Semantic tokens `[B, length]`, the first P of them `prompt` `[B, P]` (continuation).

        Args:
            cond: conditioning tokens `[B, Q]`.
            tempo: tempo features `[B, tempo_dim]` (gen/tempo.py) where the LM takes them; the guidance branch
                gets none.
            beat: beat features `[B, >= length, beat_dim]` (gen/tempo.py beat_features) where the LM takes them:
                the grid the plan follows.
            guide_beat: the guidance branch gets no grid, so guidance steers towards it too (True), or both
                branches read it and guidance steers towards the prompt alone (False).
            beat_guidance: guidance towards the grid as a condition of its own (`guidance_branches`; None: the
                grid is one more input of the prompt branch).
            length: total tokens wanted (prompt included).
            uncond: the guidance prefix `[B, Q]` (default: the null prefix); used when guidance_scale != 1.
            guidance_scale: classifier-free guidance; 1 disables it (no batch doubling).
            sampling: temperature / top-k / top-p (default: plain sampling at temperature 1).
            generators: one per output (default: torch's global generator for all).
            context_fraction: past the window, this share of a window is kept as the next window's prompt.
            on_step: called after every sampled token.
        """
        tokens = _start(prompt, cond.shape[0], cond.device)
        branches, weights = guidance_branches(guidance_scale, beat is not None and self.beat is not None,
                                              beat_guidance, beat_in_null=not guide_beat)
        sampler = _Sampler(sampling, generators, cond.shape[0], weights)
        for context, new in plan_windows(length, tokens.shape[1], self.config.window, context_fraction):
            begin = tokens.shape[1] - context
            ctx = tokens[:, begin:]
            grid = None if beat is None else beat[:, begin:]
            tokens = torch.cat([tokens, self._window(cond, uncond, ctx, new, sampler, on_step, tempo, grid,
                                                     branches)], dim=1)
        return tokens

    def _window(self, cond: Tensor, uncond: Tensor | None, ctx: Tensor, new: int, sampler: _Sampler,
                on_step: Callable[[], Any] | None, tempo: Tensor | None = None, beat: Tensor | None = None,
                branches: Sequence[Branch] = (Branch(False, True),)) -> Tensor:
        """`beat` `[B, F, beat_dim]`: frame 0 = the window's first context token; `branches`: the guidance
        batch's branches, in the sampler's order."""
        b, c = ctx.shape
        null = uncond if uncond is not None else self.null_cond(b)
        # the null branch reads no tempo vector (its guidance pushes towards the tempo as well as the prompt)
        x = torch.cat([self.embed(null, ctx, beat=beat if br.beat else None) if br.null else
                       self.embed(cond, ctx, tempo, beat if br.beat else None) for br in branches])  # [n * B, T0, D]
        # the beat of the token each sampled input predicts (the first new token's is in the prefill)
        ahead = self.beat_embedding(beat, c + 1, max(new - 1, 0), b)
        if isinstance(ahead, Tensor):
            ahead = torch.cat([ahead if br.beat else torch.zeros_like(ahead) for br in branches])
        cache = self.new_cache(x.shape[0], x.shape[1] + new - 1)
        h = self.run(x, cache)[:, -1]  # [B', D]
        pos, out = x.shape[1], []
        for i in range(new):
            token = sampler(self.semantic.level_logits(h, 0))  # [B]
            out.append(token)
            if on_step is not None:
                on_step()
            if i < new - 1:
                step = self.semantic.level(sampler.expand(token), 0)  # [B', D]
                if isinstance(ahead, Tensor):
                    step = step + ahead[:, i]
                h = self.run(step[:, None], cache, pos)[:, -1]
                pos += 1
        return torch.stack(out, dim=1)  # [B, new]


class CoarseLM(TokenLM):
    """[cond Q][SEM] s_1 ... s_N [AC] a(1,1) ... a(1,Kc) a(2,1) ...: the first Kc codec levels, frame by frame,
    given the conditioning prefix and the semantic tokens of the same span (N = frames / frames_per_semantic).

    `coarse_pattern="delay"`: the acoustic segment has one position per frame plus Kc - 1; the input at
    position p is the sum of the embeddings of the codes sampled at p - 1 ([AC] is added at p = 0) and its
    output is level j of frame p - j for every j (the fine stage's delay pattern, with conditioning).
    """

    stage = "coarse"

    def __init__(self, config: TokenLMConfig):
        super().__init__(config)
        c = config
        self.cond = CodebookEmbedding(c.cond_levels, c.cond_codebook_size, c.d_model, c.cond_embed_dim)
        self.specials = nn.Embedding(2, c.d_model)
        self.semantic = CodebookEmbedding(1, c.semantic_vocab, c.d_model)
        self.acoustic = CodebookEmbedding(c.n_coarse, c.acoustic_codebook_size, c.d_model, c.acoustic_embed_dim)
        self.aligned = nn.Embedding(c.semantic_vocab, c.d_model) if c.aligned_semantic else None
        self.beat = nn.Linear(c.beat_dim, c.d_model, bias=False) if c.beat_dim else None
        self._init_weights()
        if self.beat is not None:  # silent until trained: a beat input changes nothing at first
            nn.init.zeros_(self.beat.weight)
        self.register_buffer("delays", torch.arange(c.n_coarse), persistent=False)

    @property
    def delay_pattern(self) -> bool:
        return self.config.coarse_pattern == "delay"

    def steps(self, new: int) -> int:
        """Sampling steps to add `new` frames in one window."""
        return new + self.config.max_delay if self.delay_pattern else new * self.config.n_coarse

    def aligned_embedding(self, semantic: Tensor, first: int, count: int, beat: Tensor | None = None
                          ) -> Tensor | float:
        """What acoustic-segment positions first..first+count-1 add (position 0 is [AC], position p > 0 the
        code a(p-1)): the aligned embedding of the semantic token of the frame each position predicts, plus
        the beat features of that frame through `beat` (`[B, F, beat_dim]` or None: no beat), `[B, count, D]`;
        0.0 with neither. `semantic` `[B, N]` and `beat` start at the window's frame 0."""
        c = self.config
        use_beat = beat is not None and self.beat is not None
        if self.aligned is None and not use_beat:
            return 0.0
        frames = torch.arange(first, first + count, device=semantic.device)  # the frame (level 1) each predicts
        if not self.delay_pattern:
            frames = frames // c.n_coarse
        out: Tensor | float = 0.0
        if self.aligned is not None:
            index = (frames // c.frames_per_semantic).clamp(max=semantic.shape[1] - 1)  # the last code predicts none
            out = self.aligned(semantic[:, index])  # [B, count, D]
        if use_beat:
            out = out + self._beat_input(beat, frames, semantic.shape[0])
        return out

    def embed(self, cond: Tensor, semantic: Tensor, coarse: Tensor, beat: Tensor | None = None) -> Tensor:
        """cond `[B, Q]`, semantic `[B, N]`, coarse `[B, S, Kc]` (frame-major), beat `[B, S, beat_dim]` or None ->
        `[B, Q + 2 + N + S * Kc, D]`."""
        b = cond.shape[0]
        acoustic = self.acoustic(coarse).flatten(1, 2)  # [B, S * Kc, D], a(1,1) a(1,2) ... a(2,1) ...
        segment = torch.cat([self._special(self.AC, b), acoustic], dim=1)  # [B, 1 + S * Kc, D]
        segment = segment + self.aligned_embedding(semantic, 0, segment.shape[1], beat)
        return torch.cat([self._prefix(cond, semantic), segment], dim=1)

    def delay_segment(self, semantic: Tensor, previous: Tensor, first: int, beat: Tensor | None = None) -> Tensor:
        """Delay pattern: acoustic-segment inputs at positions first..first+P-1 from `previous` `[B, P, Kc]`,
        the slot codes of the position before each -> `[B, P, D]` ([AC] added at position 0)."""
        x = self.acoustic(previous).sum(2)  # [B, P, D]
        if first == 0:
            x = torch.cat([x[:, :1] + self._special(self.AC, x.shape[0]), x[:, 1:]], dim=1)
        return x + self.aligned_embedding(semantic, first, x.shape[1], beat)

    def _prefix(self, cond: Tensor, semantic: Tensor) -> Tensor:
        """[cond Q][SEM] s_1 ... s_N -> `[B, Q + 1 + N, D]`."""
        return torch.cat([self._cond_prefix(cond), self._special(self.SEM, cond.shape[0]),
                          self.semantic(semantic[..., None])[:, :, 0]], dim=1)

    def forward(self, cond: Tensor, semantic: Tensor, coarse: Tensor, beat: Tensor | None = None) -> LMOutput:
        """cond `[B, Q]`, semantic `[B, N]`, coarse codes `[B, Kc, S]`, beat features `[B, S, beat_dim]` (None:
        no beat) -> logits `[B, S, Kc, V]` (flat) or `[B, S + Kc - 1, Kc, V]` with targets in delay slots,
        IGNORE where a slot holds no frame (delay)."""
        b, k, s = coarse.shape
        if self.delay_pattern:
            none = self.acoustic.none
            slots = delay_slots(coarse, self.delays, s + k - 1, none)  # [B, P, Kc], the targets
            previous = F.pad(slots, (0, 0, 1, 0), value=none)[:, :-1]
            h = self.run(torch.cat([self._prefix(cond, semantic), self.delay_segment(semantic, previous, 0, beat)],
                                   dim=1))
            start = self.config.cond_levels + 1 + semantic.shape[1]
            logits = self.acoustic.logits(h[:, start:, None].expand(-1, -1, k, -1))  # [B, P, Kc, V]
            return LMOutput(logits, slots.masked_fill(slots == none, IGNORE))
        frames = coarse.transpose(1, 2)  # [B, S, Kc]
        h = self.run(self.embed(cond, semantic, frames, beat)[:, :-1])  # the last code predicts nothing
        start = self.config.cond_levels + 1 + semantic.shape[1]  # the [AC] position predicts a(1,1)
        logits = self.acoustic.logits(h[:, start:].reshape(b, s, k, -1))  # [B, S, Kc, V]
        return LMOutput(logits, frames)

    @torch.inference_mode()
    def generate(self, cond: Tensor, semantic: Tensor, frames: int, *, prompt: Tensor | None = None,
                 uncond: Tensor | None = None, guidance_scale: float = 1.0, sampling: SamplingParams | None = None,
                 generators: Sequence[torch.Generator] | None = None, context_fraction: float = 0.5,
                 on_step: Callable[[], Any] | None = None, beat: Tensor | None = None,
                 beat_guidance: float | None = None) -> Tensor:
        """Coarse codes `[B, Kc, frames]`, the first P frames `prompt` `[B, Kc, P]`.

        `semantic` `[B, >= frames / frames_per_semantic]` covers the whole span; each window reads the
        semantic tokens of its own frames. `beat` `[B, >= frames, beat_dim]` (gen/tempo.py beat_features): the
        beat grid to follow, read the same way (None: none; both halves of a guidance batch read it, unless
        `beat_guidance` makes it a condition of its own: `guidance_branches`). Other arguments as
        `SemanticLM.generate`.
        """
        r, k = self.config.frames_per_semantic, self.config.n_coarse
        need = -(-frames // r)
        if semantic.shape[1] < need:
            raise ValueError(f"{frames} frames need {need} semantic tokens, got {semantic.shape[1]}")
        codes = _start(prompt, cond.shape[0], cond.device, levels=k).transpose(1, 2)  # [B, P, Kc]
        if codes.shape[1] % r:
            raise ValueError(f"a coarse prompt must be a whole number of semantic tokens ({r} frames each), "
                             f"got {codes.shape[1]} frames")
        branches, weights = guidance_branches(guidance_scale, beat is not None and self.beat is not None,
                                              beat_guidance=beat_guidance, beat_in_null=True)
        sampler = _Sampler(sampling, generators, cond.shape[0], weights)
        for context, new in plan_windows(frames, codes.shape[1], self.config.window, context_fraction, multiple=r):
            begin = codes.shape[1] - context  # a multiple of r: the window starts on a semantic token
            sem = semantic[:, begin // r: -(-(codes.shape[1] + new) // r)]
            grid = None if beat is None else beat[:, begin: codes.shape[1] + new]
            codes = torch.cat([codes, self._window(cond, uncond, sem, codes[:, begin:], new, sampler, on_step, grid,
                                                   branches)], dim=1)
        return codes.transpose(1, 2)  # [B, Kc, frames]

    def _window(self, cond: Tensor, uncond: Tensor | None, sem: Tensor, ctx: Tensor, new: int, sampler: _Sampler,
                on_step: Callable[[], Any] | None, beat: Tensor | None = None,
                branches: Sequence[Branch] = (Branch(False, True),)) -> Tensor:
        """`branches`: the guidance batch's branches, in the sampler's order."""
        if self.delay_pattern:
            return self._delay_window(cond, uncond, sem, ctx, new, sampler, on_step, beat, branches)
        k = self.config.n_coarse
        null = uncond if uncond is not None else self.null_cond(cond.shape[0])
        x = torch.cat([self.embed(null if br.null else cond, sem, ctx, beat if br.beat else None)
                       for br in branches])  # [n * B, T0, D]
        steps = new * k
        cache = self.new_cache(x.shape[0], x.shape[1] + steps - 1)
        h = self.run(x, cache)[:, -1]
        pos, out = x.shape[1], []
        first = 1 + ctx.shape[1] * k  # acoustic-segment position of the first new code's input
        # every branch reads the same plan; those with the grid read it too
        aligned = self.aligned_embedding(sem, first, steps, beat)  # [B, steps, D] or 0.0
        if isinstance(aligned, Tensor) and sampler.cfg:
            plain = aligned
            if not all(br.beat for br in branches):
                plain = self.aligned_embedding(sem, first, steps, None)
                plain = plain if isinstance(plain, Tensor) else torch.zeros_like(aligned)
            aligned = torch.cat([aligned if br.beat else plain for br in branches])  # [n * B, steps, D]
        for i in range(steps):
            level = i % k
            token = sampler(self.acoustic.level_logits(h, level))  # [B]
            out.append(token)
            if on_step is not None:
                on_step()
            if i < steps - 1:
                x = self.acoustic.level(sampler.expand(token), level)  # [B', D]
                if isinstance(aligned, Tensor):
                    x = x + aligned[:, i]
                h = self.run(x[:, None], cache, pos)[:, -1]
                pos += 1
        return torch.stack(out, dim=1).view(-1, new, k)  # [B, new, Kc]

    def _delay_window(self, cond: Tensor, uncond: Tensor | None, sem: Tensor, ctx: Tensor, new: int,
                      sampler: _Sampler, on_step: Callable[[], Any] | None, beat: Tensor | None = None,
                      branches: Sequence[Branch] = (Branch(False, True),)) -> Tensor:
        """Delay pattern: ctx `[B, C, Kc]` known frames -> the `new` frames after them `[B, new, Kc]`."""
        b, c, k = ctx.shape
        w, none = c + new, self.acoustic.none
        positions = w + k - 1
        known = F.pad(ctx.transpose(1, 2), (0, new), value=none)  # [B, Kc, W]
        slots = delay_slots(known, self.delays, positions, none)  # [B, P, Kc]
        # prefill the prefix and positions 0..c: their inputs (slots of earlier positions) hold known frames only
        previous = F.pad(slots, (0, 0, 1, 0), value=none)[:, : c + 1]
        null = uncond if uncond is not None else self.null_cond(b)
        x = torch.cat([torch.cat([self._prefix(null if br.null else cond, sem),
                                  self.delay_segment(sem, previous, 0, beat if br.beat else None)], dim=1)
                       for br in branches])  # [n * B, T0, D]
        cache = self.new_cache(x.shape[0], x.shape[1] + positions - 1 - c)
        h = self.run(x, cache)[:, -1]  # [B', D]
        pos = x.shape[1]
        for p in range(c, positions):
            for j in range(k):
                if c <= p - j < w:  # a frame to fill (earlier ones are known, later ones not reached yet)
                    slots[:, p, j] = sampler(self.acoustic.level_logits(h, j))
            if on_step is not None:
                on_step()
            if p < positions - 1:
                step = {use: self.delay_segment(sem, slots[:, p: p + 1], p + 1, beat if use else None)
                        for use in {br.beat for br in branches}}  # [B, 1, D] with and / or without the grid
                h = self.run(torch.cat([step[br.beat] for br in branches]), cache, pos)[:, -1]
                pos += 1
        return undelay_slots(slots, self.delays.tolist(), w)[:, c:]  # [B, new, Kc]


class FineLM(TokenLM):
    """One position per codec frame: coarse codes in, the `n_fine` next levels out, no conditioning.

    Input at position p: sum of the embeddings of frame p's coarse codes and of the fine codes predicted
    one position earlier; output at p: level j of frame p - delay_j (delay_j = j for the delay pattern,
    0 for parallel heads). "none" codes fill the slots outside the frames.
    """

    stage = "fine"

    def __init__(self, config: TokenLMConfig):
        super().__init__(config)
        c = config
        self.acoustic = CodebookEmbedding(c.n_coarse + c.n_fine, c.acoustic_codebook_size, c.d_model,
                                          c.acoustic_embed_dim)
        self._init_weights()
        self.register_buffer("delays", torch.arange(c.n_fine) if c.fine_pattern == "delay"
                             else torch.zeros(c.n_fine, dtype=torch.long), persistent=False)

    def delayed(self, fine: Tensor, positions: int) -> Tensor:
        """fine `[B, Kf, S]` -> `[B, positions, Kf]`: slot (p, j) holds level j of frame p - delay_j, or none."""
        return delay_slots(fine, self.delays, positions, self.acoustic.none)

    def embed(self, coarse: Tensor, previous_fine: Tensor) -> Tensor:
        """coarse `[B, P, Kc]`, previous_fine `[B, P, Kf]` (slot codes one position earlier) -> `[B, P, D]`."""
        return self.acoustic(torch.cat([coarse, previous_fine], dim=-1)).sum(2)

    def _coarse_slots(self, coarse: Tensor, positions: int) -> Tensor:
        """coarse `[B, Kc, S]` -> `[B, positions, Kc]`, none past the last frame."""
        frames = coarse.transpose(1, 2)
        return F.pad(frames, (0, 0, 0, positions - frames.shape[1]), value=self.acoustic.none)

    def forward(self, coarse: Tensor, fine: Tensor) -> LMOutput:
        """coarse `[B, Kc, S]`, fine `[B, Kf, S]` -> logits `[B, S + max_delay, Kf, V]`."""
        positions = fine.shape[2] + self.config.max_delay
        slots = self.delayed(fine, positions)  # [B, P, Kf], the targets
        previous = F.pad(slots, (0, 0, 1, 0), value=self.acoustic.none)[:, :-1]
        h = self.run(self.embed(self._coarse_slots(coarse, positions), previous))  # [B, P, D]
        logits = self.acoustic.logits(h[:, :, None].expand(-1, -1, self.config.n_fine, -1),
                                      first_level=self.config.n_coarse)  # [B, P, Kf, V]
        targets = slots.masked_fill(slots == self.acoustic.none, IGNORE)
        return LMOutput(logits, targets)

    @torch.inference_mode()
    def generate(self, coarse: Tensor, *, prompt: Tensor | None = None, sampling: SamplingParams | None = None,
                 generators: Sequence[torch.Generator] | None = None, context_fraction: float = 0.25,
                 on_step: Callable[[], Any] | None = None) -> Tensor:
        """Fine codes `[B, Kf, S]` for coarse codes `[B, Kc, S]`; the first P frames are `prompt` `[B, Kf, P]`."""
        b, _, s = coarse.shape
        fine = _start(prompt, b, coarse.device, levels=self.config.n_fine).transpose(1, 2)  # [B, P, Kf]
        sampler = _Sampler(sampling, generators, b)
        for context, new in plan_windows(s, fine.shape[1], self.config.window, context_fraction):
            begin = fine.shape[1] - context
            window = self._window(coarse[:, :, begin:begin + context + new], fine[:, begin:], sampler, on_step)
            fine = torch.cat([fine, window[:, context:]], dim=1)
        return fine.transpose(1, 2)  # [B, Kf, S]

    def steps(self, new: int) -> int:
        """Sampling steps to fill `new` frames of a window."""
        return new + self.config.max_delay

    def _window(self, coarse: Tensor, known: Tensor, sampler: _Sampler, on_step: Callable[[], Any] | None) -> Tensor:
        """coarse `[B, Kc, W]`, known fine `[B, C, Kf]` of the first C frames -> fine `[B, W, Kf]`."""
        b, _, w = coarse.shape
        c, kf, none = known.shape[1], self.config.n_fine, self.acoustic.none
        positions = w + self.config.max_delay
        slots = self.delayed(F.pad(known.transpose(1, 2), (0, w - c), value=none), positions)  # [B, P, Kf]
        coarse_slots = self._coarse_slots(coarse, positions)
        delays = self.delays.tolist()
        cache = self.new_cache(b, positions)
        # prefill positions 0..c: their inputs (coarse, fine slots of earlier positions) are all known
        previous = F.pad(slots, (0, 0, 1, 0), value=none)[:, : c + 1]
        h = self.run(self.embed(coarse_slots[:, : c + 1], previous), cache)[:, -1]  # [B, D]
        for p in range(c, positions):
            for j in range(kf):
                frame = p - delays[j]
                if c <= frame < w:  # a frame to fill (earlier ones are known, later ones are not yet reached)
                    slots[:, p, j] = sampler(self.acoustic.level_logits(h, self.config.n_coarse + j))
            if on_step is not None:
                on_step()
            if p < positions - 1:
                x = self.embed(coarse_slots[:, p + 1: p + 2], slots[:, p: p + 1])  # [B, 1, D]
                h = self.run(x, cache, p + 1)[:, -1]
        return undelay_slots(slots, delays, w)


LM_CLASSES: dict[str, type[TokenLM]] = {"SemanticLM": SemanticLM, "CoarseLM": CoarseLM, "FineLM": FineLM}
STAGE_CLASSES: dict[str, type[TokenLM]] = {"semantic": SemanticLM, "coarse": CoarseLM, "fine": FineLM}


# config fields a trained LM can change without losing its weights: `aligned_semantic` adds parameters (at zero:
# the grown model computes what it did); `n_coarse` (larger only) appends a level's rows to the acoustic table
# (at zero: in the delay pattern the old levels' predictions are unchanged); `coarse_pattern` keeps every parameter and re-lays out the sequence, so the model starts from what
# its blocks and tables learned but must re-learn positions (token model v5)
GROWABLE = ("aligned_semantic", "coarse_pattern", "n_coarse", "tempo_dim", "beat_dim")


def grow_lm(lm: TokenLM, **changes: Any) -> TokenLM:
    """A copy of `lm` with config `changes` (fields of `GROWABLE`) whose new parameters start at zero, so the
    grown model computes exactly what `lm` did until training moves them (how token model v3's coarse LM
    started from v2's weights)."""
    unknown = sorted(set(changes) - set(GROWABLE))
    if unknown:
        raise ValueError(f"cannot grow a trained LM by {unknown[0]!r}: growable fields are {', '.join(GROWABLE)}")
    if changes.get("n_coarse", lm.config.n_coarse) < lm.config.n_coarse:
        raise ValueError(f"cannot grow n_coarse from {lm.config.n_coarse} down to {changes['n_coarse']}")
    grown = build_lm(dataclasses.replace(lm.config, **changes)).to(lm.device)
    old, new = lm.state_dict(), grown.state_dict()
    longer = {k for k in old if k in new and old[k].shape != new[k].shape}
    for name in longer:  # tables with rows appended (levels are laid out level-major): old rows first, new at zero
        if old[name].shape[1:] != new[name].shape[1:] or old[name].shape[0] > new[name].shape[0]:
            raise ValueError(f"cannot grow: {name!r} changes shape {list(old[name].shape)} -> {list(new[name].shape)}")
    missing, unexpected = grown.load_state_dict({k: v for k, v in old.items() if k not in longer}, strict=False)
    if unexpected:
        raise ValueError(f"cannot grow: the change drops {unexpected[0]!r}")
    with torch.no_grad():
        for name in missing:
            grown.get_parameter(name).zero_()
        for name in longer:
            grown.get_parameter(name)[: old[name].shape[0]] = old[name]
    return grown.train(lm.training)


def build_lm(config: TokenLMConfig) -> TokenLM:
    """A randomly initialised LM of the config's stage."""
    return STAGE_CLASSES[config.stage](config)


# ------------------------------------------------------------------------------------------- sampling


def plan_windows(total: int, have: int, window: int, context_fraction: float, *, multiple: int = 1
                 ) -> list[tuple[int, int]]:
    """(context, new) per window to grow a sequence from `have` to `total` items in windows of `window`.

    The context is what is already there, at most `context_fraction` of a window (MusicLM: half), rounded
    down to `multiple`; each window adds `window - context` new items (fewer at the end).
    """
    if not 0.0 <= context_fraction < 1.0:
        raise ValueError(f"context_fraction must be in [0, 1), got {context_fraction}")
    keep = max(0, int(window * context_fraction) // multiple * multiple)
    plan = []
    while have < total:
        context = min(have, keep) // multiple * multiple
        new = min(window - context, total - have)
        plan.append((context, new))
        have += new
    return plan


def _start(prompt: Tensor | None, batch: int, device: torch.device, levels: int | None = None) -> Tensor:
    if prompt is None:
        shape = (batch, 0) if levels is None else (batch, levels, 0)
        return torch.zeros(shape, dtype=torch.long, device=device)
    if prompt.shape[0] != batch or (levels is not None and (prompt.dim() != 3 or prompt.shape[1] != levels)):
        want = f"[{batch}, P]" if levels is None else f"[{batch}, {levels}, P]"
        raise ValueError(f"prompt must be shaped {want}, got {list(prompt.shape)}")
    return prompt.long().to(device)


class _Sampler:
    """Draws one token per output from logits `[n * B, V]` of n guidance branches (stacked branch-major, see
    `guidance_branches`) summed with their weights, then temperature, top-k, top-p, and one draw per output
    from its own generator."""

    def __init__(self, sampling: SamplingParams | None, generators: Sequence[torch.Generator] | None, batch: int,
                 weights: Sequence[float] = (1.0,)):
        self.params = sampling or SamplingParams()
        if generators is not None and len(generators) != batch:
            raise ValueError(f"need one generator per output ({batch}), got {len(generators)}")
        self.generators = list(generators) if generators is not None else None
        self.weights = [float(w) for w in weights]
        self.branches = len(self.weights)

    @property
    def cfg(self) -> bool:
        return self.branches > 1

    def expand(self, token: Tensor) -> Tensor:
        """`[B]` -> `[n * B]`, repeated for every branch."""
        return token.repeat(self.branches) if self.cfg else token

    def __call__(self, logits: Tensor) -> Tensor:
        logits = logits.float()
        if self.cfg:
            logits = sum(w * part for w, part in zip(self.weights, logits.chunk(self.branches)))
        return sample_logits(logits, self.params, self.generators)


def sample_logits(logits: Tensor, params: SamplingParams, generators: Sequence[torch.Generator] | None = None
                  ) -> Tensor:
    """logits `[B, V]` -> tokens `[B]`: temperature, then top-k, then top-p (nucleus), then a draw per row
    from `generators[row]` (CPU generators: the draws do not depend on the device)."""
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    probs = logits.softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1)[:, 0]
    gen_device = generators[0].device
    probs_g = probs.to(gen_device)
    draws = [torch.multinomial(probs_g[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(draws).to(logits.device)
