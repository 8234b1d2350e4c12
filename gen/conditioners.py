"""Text conditioners: prompts -> CLAP embeddings `[B, D]` for the UNet's FiLM condition (and token states
`[B, L, D']` for cross-attention), clips -> CLAP scores for re-ranking.

One contract (`ClapConditioner`), one small class per source, each in two steps as AudioCraft's
conditioners are: `tokenize(texts)` turns text into the model's inputs (token ids, or our CLAP's cached
sentence vectors), `forward(inputs)` turns those into L2-normalised embeddings, as AudioLDM and MusicLDM
feed them.

- `SoundsmithClapConditioner`: our `SoundsmithClap` (frozen MiniLM + trained projection, audio tower).
- `ClapModelConditioner`: a transformers `ClapModel` behind `TransformersClap` (MusicLDM; has an audio tower).
- `ClapTextConditioner`: a text-only transformers `ClapTextModelWithProjection` + tokenizer (AudioLDM).

The unconditional embedding is zeros (our UNets learn it by condition dropout) or the CLAP embedding of
"" (AudioLDM / MusicLDM). `ClapConditioner(model)` and `ClapConditioner.from_pretrained(folder)` pick the
class of the model's source (`source_class`), as `pathlib.Path(...)` builds a `PosixPath`.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from soundsmith.core.files import read_json_object
from soundsmith.core.weights import weights_fingerprint
from torch import Tensor, nn

from .clap import SoundsmithClap, TransformersClap, _features, check_texts, load_clap

log = logging.getLogger(__name__)

# SoundsmithClap.embed_text's batch: MiniLM pads within a batch, so the same split gives the same vectors
TEXT_BATCH = 64


class ClapConditioner(ABC):
    """The contract: `embed_text` (= `forward(tokenize(texts))`), `embed_prompts` with None for the
    unconditional embedding, `token_states` for cross-attention, `score` where there is an audio tower,
    `fingerprint` of the wrapped weights, `save_pretrained` in the source's own folder layout.

    `ClapConditioner(model, tokenizer=None, null_condition="zeros")` builds the subclass of the model's source
    (`tokenizer`: a text-only transformers CLAP's own).
    """

    has_audio_tower: ClassVar[bool] = False

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> ClapConditioner:
        return super().__new__(source_class(model) if cls is ClapConditioner else cls)

    def __init__(self, model: Any, *, tokenizer: Any = None, null_condition: str = "zeros"):
        self.model = model
        self.tokenizer = tokenizer
        self.null_condition = null_condition
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------------------------- facts

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width D of the embeddings."""

    @property
    def min_audio_s(self) -> float:
        """The shortest clip `score` takes."""
        return 0.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self) -> Any:
        return self.model.parameters()

    def to(self, device: Any = None, dtype: Any = None) -> ClapConditioner:
        self.model.to(device=device, dtype=dtype)
        if dtype not in (None, torch.float32, torch.float16):  # bf16 weights round to other fp16 values
            self._fingerprint = None
        return self

    def fingerprint(self) -> str:
        """`weights_fingerprint` of the wrapped model, computed once (the weights are frozen): loading checks
        it against several parts' records and the watermark payload hashes it."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    # ------------------------------------------------------------------------------------- text

    @abstractmethod
    def tokenize(self, texts: str | list[str]) -> dict[str, Tensor]:
        """texts -> the model's inputs, on its device."""

    @abstractmethod
    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """`tokenize`'s inputs -> L2-normalised `[B, D]` float32."""

    @abstractmethod
    def text_limit(self) -> tuple[Any, int]:
        """The tokenizer and the number of tokens (special ones included) the text encoder reads."""

    @abstractmethod
    def text_transformer(self) -> tuple[Any, nn.Module, int | None]:
        """(tokenizer, the transformer whose last hidden states are the token states, max tokens or None)."""

    @torch.no_grad()
    def embed_text(self, texts: str | list[str]) -> Tensor:
        """texts -> L2-normalised `[B, D]` float32."""
        return self.forward(self.tokenize(texts))

    def warn_long_prompts(self, texts: Sequence[str]) -> None:
        """One warning when prompts are longer than the text encoder reads: it keeps their first tokens and
        drops the rest without a word. Called once per pipeline call (the encoders run several times)."""
        tokenizer, limit = self.text_limit()
        distinct = list(dict.fromkeys(texts))
        lengths = [len(ids) for ids in tokenizer(distinct, verbose=False)["input_ids"]]  # verbose: no HF warning
        long = [(text, n) for text, n in zip(distinct, lengths) if n > limit]
        if not long:
            return
        text, n = long[0]
        try:  # the characters those tokens cover (fast tokenizers give offsets)
            offsets = tokenizer(text, truncation=True, max_length=limit, return_offsets_mapping=True)["offset_mapping"]
            kept = f"its first {max(end for _, end in offsets)} characters"
        except (NotImplementedError, ValueError, KeyError):
            kept = "the rest is dropped"
        more = f" ({len(long) - 1} more prompts are cut too)" if len(long) > 1 else ""
        shown = text if len(text) <= 40 else text[:37] + "..."
        log.warning("prompt %r is %d tokens long; the text encoder reads only its first %d tokens (%s)%s", shown, n,
                    limit, kept, more)

    def null_embedding(self, n: int) -> Tensor:
        """The unconditional embedding `[n, D]` (zeros, or the embedding of "")."""
        if self.null_condition == "zeros":
            return torch.zeros(n, self.dim, device=self.device)
        return self.embed_text([""]).expand(n, -1).clone()

    def embed_prompts(self, texts: Sequence[str | None]) -> Tensor:
        """Prompts where None means unconditional -> `[B, D]` (one text-encoder call for the distinct texts)."""
        distinct = list(dict.fromkeys(t for t in texts if t is not None))
        table = dict(zip(distinct, self.embed_text(distinct))) if distinct else {}
        null = self.null_embedding(1)[0] if any(t is None for t in texts) else None
        return torch.stack([table[t] if t is not None else null for t in texts])

    @torch.no_grad()
    def token_states(self, texts: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        """Token states `[B, L, D']` and mask `[B, L]` for cross-attention; None -> one zero token."""
        tokenizer, model, max_len = self.text_transformer()
        real = [t for t in texts if t is not None]
        states, mask = None, None
        if real:
            batch = tokenizer(real, padding=True, truncation=True, return_tensors="pt",
                              **({"max_length": max_len} if max_len else {}))
            device = next(model.parameters()).device
            states = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).last_hidden_state.float()
            mask = batch["attention_mask"].to(device)
        width = states.shape[-1] if states is not None else int(model.config.hidden_size)
        length = states.shape[1] if states is not None else 1
        out = torch.zeros(len(texts), length, width, device=self.device)
        out_mask = torch.zeros(len(texts), length, dtype=torch.long, device=self.device)
        k = 0
        for i, t in enumerate(texts):
            if t is None:
                out_mask[i, 0] = 1  # one zero token: attention needs at least one key
            else:
                out[i], out_mask[i] = states[k], mask[k]
                k += 1
        return out, out_mask

    # ------------------------------------------------------------------------------------ audio

    @torch.no_grad()
    def score(self, texts: list[str], audio: Tensor, sample_rate: int) -> Tensor:
        """Cosine of each clip `[B, C, T]` with its text in the CLAP space -> `[B]` float32 CPU."""
        a = self.model.embed_audio(audio, sample_rate).float()  # [B, D]
        t = self.embed_text(list(dict.fromkeys(texts)))
        index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        return (a * t[[index[x] for x in texts]].to(a.device)).sum(-1).cpu()

    # ---------------------------------------------------------------------------------- folders

    @abstractmethod
    def save_pretrained(self, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write the folder `from_pretrained` reads back."""

    @classmethod
    def from_pretrained(cls, folder: Path, null_condition: str = "zeros") -> ClapConditioner:
        """Our CLAP folder, a transformers ClapModel folder, or a ClapTextModelWithProjection folder."""
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"CLAP folder not found (no config.json): {folder}")
        if read_json_object(config_path).get("model_type") == "clap_text_model":
            from transformers import AutoTokenizer, ClapTextModelWithProjection

            model = ClapTextModelWithProjection.from_pretrained(str(folder), local_files_only=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            return ClapTextConditioner(model, tokenizer=tokenizer, null_condition=null_condition)
        return ClapConditioner(load_clap(folder).eval(), null_condition=null_condition)


def source_class(model: Any) -> type[ClapConditioner]:
    """The conditioner class of a loaded CLAP: `SoundsmithClap`, `TransformersClap` (a transformers `ClapModel`)
    or a transformers `ClapTextModelWithProjection`."""
    if isinstance(model, SoundsmithClap):
        return SoundsmithClapConditioner
    if isinstance(model, TransformersClap):
        return ClapModelConditioner
    if type(model).__name__ == "ClapTextModelWithProjection":  # transformers is imported only where it is used
        return ClapTextConditioner
    raise ValueError(f"unsupported CLAP model {type(model).__name__}: expected SoundsmithClap, a "
                     "transformers ClapModel or ClapTextModelWithProjection")


# ------------------------------------------------------------------------------------------ ours


class SoundsmithClapConditioner(ClapConditioner):
    """Our CLAP: the inputs are the frozen MiniLM's sentence vectors (cached per text by the encoder), the
    forward is the trained projection."""

    has_audio_tower = True

    def __init__(self, model: SoundsmithClap, *, tokenizer: Any = None, null_condition: str = "zeros"):
        if null_condition == "empty_text":
            raise ValueError("our CLAP rejects empty text; use null_condition='zeros'")
        super().__init__(model, null_condition=null_condition)  # its tokenizer is the text encoder's

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def min_audio_s(self) -> float:
        """One output frame of the audio tower."""
        return self.model.config.min_samples / self.model.sample_rate

    def tokenize(self, texts: str | list[str]) -> dict[str, Tensor]:
        texts = check_texts(texts)
        features = [self.model.text_features(texts[i:i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)]
        return {"features": torch.cat(features)}  # [B, text_dim]

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        # projected batch by batch, as SoundsmithClap.embed_text does
        return torch.cat([self.model.project_text(f) for f in inputs["features"].split(TEXT_BATCH)]).float()

    def text_limit(self) -> tuple[Any, int]:
        encoder = self.model.text_encoder
        return encoder.tokenizer, int(encoder.max_tokens)

    def text_transformer(self) -> tuple[Any, nn.Module, int | None]:
        encoder = self.model.text_encoder
        return encoder.tokenizer, encoder.model, encoder.max_tokens

    def save_pretrained(self, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return self.model.save_pretrained(folder, dtype=dtype)


# ---------------------------------------------------------------------------------- transformers


class _TransformersConditioner(ClapConditioner):
    """What both transformers CLAPs share: a RoBERTa tokenizer in front of a CLAP text model."""

    def __init__(self, model: Any, *, tokenizer: Any = None, null_condition: str = "zeros"):
        if tokenizer is None:
            raise ValueError("a transformers CLAP needs its tokenizer (vocab.json/merges.txt or tokenizer.json)")
        super().__init__(model, tokenizer=tokenizer, null_condition=null_condition)

    @property
    @abstractmethod
    def text_config(self) -> Any:
        """The text model's transformers config."""

    def text_limit(self) -> tuple[Any, int]:
        # RoBERTa offsets positions by 2
        limit = min(int(self.tokenizer.model_max_length), int(self.text_config.max_position_embeddings) - 2)
        return self.tokenizer, limit

    def tokenize(self, texts: str | list[str]) -> dict[str, Tensor]:
        # Padded to the longest prompt, not to model_max_length as diffusers does: the attention mask makes
        # the padding inert, and 512 padded tokens cost most of a CPU call's text-encoder time.
        _, limit = self.text_limit()
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


class ClapModelConditioner(_TransformersConditioner):
    """A transformers `ClapModel` (MusicLDM's text encoder) behind `TransformersClap`, with its audio tower."""

    has_audio_tower = True

    def __init__(self, model: TransformersClap, *, tokenizer: Any = None, null_condition: str = "zeros"):
        super().__init__(model, tokenizer=model.tokenizer, null_condition=null_condition)  # the folder's own

    @property
    def dim(self) -> int:
        return int(self.model.dim)

    @property
    def text_config(self) -> Any:
        return self.model.model.config.text_config

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out = _features(self.model.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))
        return F.normalize(out.float(), dim=-1)

    def text_transformer(self) -> tuple[Any, nn.Module, int | None]:
        return self.tokenizer, self.model.model.text_model, None

    def save_pretrained(self, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        copy.deepcopy(self.model.model).to(dtype).save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        self.model.feature_extractor.save_pretrained(str(folder))
        return folder


class ClapTextConditioner(_TransformersConditioner):
    """A text-only transformers `ClapTextModelWithProjection` (AudioLDM's text encoder): no audio tower, so
    no scores."""

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def text_config(self) -> Any:
        return self.model.config

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).text_embeds
        return F.normalize(out.float(), dim=-1)

    def text_transformer(self) -> tuple[Any, nn.Module, int | None]:
        return self.tokenizer, self.model.text_model, None

    def save_pretrained(self, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        copy.deepcopy(self.model).to(dtype).save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        return folder


def cfg_token_states(uncond: tuple[Tensor, Tensor], cond: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Token states `[b, L, D']` and masks `[b, L]` of the two guidance halves -> one batch `[2b, L', D']`,
    `[2b, L']` ordered [uncond, cond] as `Pipeline.cfg_batch`, zero-padded to the longer length L'."""
    length = max(cond[0].shape[1], uncond[0].shape[1])
    padded = [(F.pad(s, (0, 0, 0, length - s.shape[1])), F.pad(m, (0, length - m.shape[1]))) for s, m in (uncond, cond)]
    return torch.cat([padded[0][0], padded[1][0]]), torch.cat([padded[0][1], padded[1][1]])
