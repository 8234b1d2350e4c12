"""Tiny random token-backend parts (seconds on a 2-core CPU), shared by the token LM / pipeline / training tests."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from soundsmith.codecs.mel import MelConfig
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_rvq import MelRVQCodec, MelRVQConfig
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.neural_codec import NeuralCodec, NeuralCodecConfig
from soundsmith.codecs.vocoders import build_vocoder
from soundsmith.core.weights import weights_fingerprint
from soundsmith.gen.clap import ClapConfig, SoundsmithClap
from soundsmith.gen.cond_tokens import ConditioningQuantizer, ConditioningQuantizerConfig
from soundsmith.gen.conditioners import ClapConditioner
from soundsmith.gen.semantic import ClapFrameFeatures, SemanticTokenizer
from soundsmith.gen.token_lm import TokenLMConfig, build_lm
from soundsmith.pipelines.tokens import TokenConfig, TokenPipeline

SR = 16000
TINY_CLAP = ClapConfig(embed_dim=32, stem_channels=4, conv_channels=(8, 8), frame_dim=16, temporal_dilations=(2,),
                       projection_hidden=32, window_s=2.0)
TINY_RVQ = ConditioningQuantizerConfig(embed_dim=32, codebook_dim=8, n_levels=3, codebook_size=16, kmeans_iters=2)
TINY_CODEC = NeuralCodecConfig(num_filters=2, hidden_size=4, n_levels=4, codebook_size=16)
# the mel RVQ over a 16-bin VAE with 4 latent channels x 4 rows: 16-d frame vectors at 25 Hz, Griffin-Lim decoding
TINY_MEL_VAE = MelVAEConfig(n_mels=16, latent_channels=4, block_out_channels=(8, 16, 16), norm_num_groups=8,
                            mid_block_add_attention=False)
TINY_MEL_RVQ = MelRVQConfig(n_levels=4, codebook_size=16, dim=16)
N_CLUSTERS = 8
# d32 x 2 layers; windows: 12 semantic tokens (0.48 s), 16 coarse frames (0.32 s), 12 fine frames (0.24 s)
TINY_LM = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, dropout=0.0, cond_levels=3, cond_codebook_size=16,
               cond_embed_dim=8, semantic_vocab=N_CLUSTERS, n_coarse=2, n_fine=2, acoustic_codebook_size=16,
               acoustic_embed_dim=16, frames_per_semantic=2)
TINY_TOKENS = TokenConfig(duration_s=0.4, max_duration_s=4.0, min_prompt_s=0.2)


def clip(seconds: float, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    """A tone plus noise, `[1, T]` (or `[B, 1, T]`)."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    shape = (batch or 1, 1, n)
    wave = 0.3 * torch.sin(2 * torch.pi * (220 + 110 * seed) * t) + 0.05 * torch.randn(shape, generator=g)
    return wave if batch else wave[0]


def tiny_clap(encoder=None, seed: int = 0) -> SoundsmithClap:
    torch.manual_seed(seed)
    return SoundsmithClap(TINY_CLAP, text_encoder=encoder).eval()


def tiny_codec(seed: int = 0) -> NeuralCodec:
    torch.manual_seed(seed)
    codec = NeuralCodec(TINY_CODEC)
    with torch.no_grad():
        z = codec.encoder(clip(1.0, seed, batch=4))  # [4, D, S]: k-means codebooks on real latents
        codec.quantizer.initialize_(z)
    return codec.eval()


def tiny_mel_codec(seed: int = 0) -> MelLatentCodec:
    """A random 16-bin mel VAE decoded by Griffin-Lim (4 iterations)."""
    torch.manual_seed(seed)
    vae = MelVAE(TINY_MEL_VAE)
    return MelLatentCodec(vae, build_vocoder({"name": "griffin-lim", "n_iter": 4, "nnls_iter": 4},
                                             mel=MelConfig(n_mels=16))).eval()


def tiny_mel_rvq(seed: int = 0, mel_codec: MelLatentCodec | None = None) -> MelRVQCodec:
    """The tiny mel codec's latent under a 4 x 16 residual VQ, k-means initialised on a few clips' latents."""
    codec = MelRVQCodec(mel_codec or tiny_mel_codec(seed), TINY_MEL_RVQ)
    torch.manual_seed(seed)
    with torch.no_grad():
        codec.quantizer.initialize_(codec.encode_latent(clip(1.0, seed, batch=4)))  # [4, 16, 25]
    return codec.eval()


def tiny_cond_rvq(clap: SoundsmithClap, seed: int = 0) -> ConditioningQuantizer:
    torch.manual_seed(seed)
    rvq = ConditioningQuantizer(dataclasses.replace(TINY_RVQ, clap_fingerprint=weights_fingerprint(clap)))
    rvq.init_from_data_(F.normalize(torch.randn(64, TINY_CLAP.embed_dim), dim=-1))
    return rvq.eval()


def tiny_kmeans(clap: SoundsmithClap, seed: int = 0) -> SemanticTokenizer:
    """Centroids = standardised frames of a clip, spread over it (no k-means run: scikit-learn's import
    alone costs seconds)."""
    features = ClapFrameFeatures(clap)
    frames = features.frame_features(clip(2.0, seed), SR)[0]  # [50, 16]
    tok = SemanticTokenizer(features, n_clusters=N_CLUSTERS)
    tok.mean, tok.std = frames.mean(0), frames.std(0).clamp(min=1e-5)
    tok.centroids = ((frames - tok.mean) / tok.std)[torch.linspace(0, 49, N_CLUSTERS).long()]
    return tok


def tiny_lm_config(stage: str, codec_rate: float = 50.0, **changes) -> TokenLMConfig:
    """`codec_rate`: 50 (the tiny EnCodec-architecture codec, 2 frames per semantic token) or 25 (the mel RVQ, 1)."""
    r = round(codec_rate / 25.0)
    window = {"semantic": 12, "coarse": 16, "fine": 12}[stage]
    rate = 25.0 if stage == "semantic" else codec_rate
    return TokenLMConfig(stage=stage, window=window, frame_rate=rate, **{**TINY_LM, "frames_per_semantic": r, **changes})


def tiny_pipeline(encoder=None, seed: int = 0, fine: bool = True, codec: str = "neural", coarse: dict | None = None,
                  **config) -> TokenPipeline:
    """Tiny random token pipeline; `codec`: "neural" (EnCodec architecture, 50 Hz) or "mel-rvq" (25 Hz);
    `coarse`: changes to the coarse LM's config (e.g. {"coarse_pattern": "delay"})."""
    from soundsmith.pipelines.tokens import codec_fingerprint

    clap = tiny_clap(encoder, seed)
    rvq, kmeans = tiny_cond_rvq(clap, seed), tiny_kmeans(clap, seed)
    codec = tiny_codec(seed) if codec == "neural" else tiny_mel_rvq(seed)
    trained_with = {"cond_rvq": rvq.fingerprint(), "kmeans": kmeans.fingerprint(), "codec": codec_fingerprint(codec)}
    torch.manual_seed(seed)
    lms = [build_lm(tiny_lm_config(stage, codec.frame_rate, trained_with=trained_with,
                                   **((coarse or {}) if stage == "coarse" else {})))
           for stage in ("semantic", "coarse", "fine")]
    pipe = TokenPipeline(ClapConditioner(clap), rvq, kmeans, lms[0], lms[1], lms[2] if fine else None, codec,
                         TokenConfig(**{**TINY_TOKENS.to_dict(), **config}))
    pipe.progress_bar = False
    return pipe
