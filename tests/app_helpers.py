"""A folder of tiny random models for the app tests: models/default-ldm and models/default-tokens (saved the way
the shipped defaults are), plus a component folder (a CLAP) that the picker must not offer."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "app" / "streamlit_app.py"
SR = 16_000
_BUILT: dict[str, Path] = {}


def tiny_model_dir() -> Path:
    """Build the folder once per process (a few CPU seconds) in a temporary directory removed at exit."""
    if "dir" not in _BUILT:
        import atexit

        import ldm_helpers
        import token_helpers
        from soundsmith.gen.text_encoder import SentenceEncoder

        root = Path(tempfile.mkdtemp(prefix="soundsmith-app-models-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        encoder = SentenceEncoder()  # the packaged MiniLM, offline; shared by both tiny CLAPs
        ldm = ldm_helpers.tiny_pipeline(encoder)
        ldm.save_pretrained(root / "default-ldm")
        token_helpers.tiny_pipeline(encoder).save_pretrained(root / "default-tokens")
        ldm.conditioner.model.save_pretrained(root / "clap")  # a component, not a pipeline
        _BUILT["dir"] = root
    return _BUILT["dir"]


def tiny_musicgen_dir() -> Path:
    """A tiny random transformers MusicGen folder, outside the model dir (the user types its path)."""
    if "musicgen" not in _BUILT:
        import torch
        from transformers import (
            EncodecConfig,
            EncodecFeatureExtractor,
            GenerationConfig,
            MusicgenConfig,
            MusicgenDecoderConfig,
            MusicgenForConditionalGeneration,
            MusicgenProcessor,
            T5Config,
        )

        # Copied from tests/test_musicgen.py (folder fixture), smaller window
        tokenizer = t5_tokenizer()
        text = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        audio = EncodecConfig(sampling_rate=8000, audio_channels=1, num_filters=4, num_residual_layers=1,
                              upsampling_ratios=[8, 5], codebook_size=1024, codebook_dim=16, hidden_size=16,
                              target_bandwidths=[8.0], num_lstm_layers=1, use_causal_conv=False, normalize=False,
                              chunk_length_s=None, overlap=None)
        decoder = MusicgenDecoderConfig(vocab_size=1024, num_codebooks=4, hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, ffn_dim=32, max_position_embeddings=256,
                                        pad_token_id=1024, bos_token_id=1024)
        torch.manual_seed(0)
        model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
        for layer in model.audio_encoder.quantizer.layers:  # zero codebooks would all decode alike
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
        model.generation_config = GenerationConfig(decoder_start_token_id=1024, pad_token_id=1024, bos_token_id=1024,
                                                   do_sample=True, guidance_scale=3.0, top_k=10, max_length=120)
        path = Path(tempfile.mkdtemp(prefix="soundsmith-app-musicgen-"))
        import atexit

        atexit.register(shutil.rmtree, path, ignore_errors=True)
        model.save_pretrained(str(path))
        MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=8000),
                          tokenizer=tokenizer).save_pretrained(str(path))
        _BUILT["musicgen"] = path
    return _BUILT["musicgen"]


def t5_tokenizer():
    """Copied from tests/test_musicgen.py: a T5 tokenizer from a Unigram model trained here (offline)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    texts = ["a jazzy piano trio", "rain on a tin roof", "a dog barks twice", "upbeat drums and bass",
             "thunder over the sea", "a calm acoustic guitar"] * 4
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=60, unk_token="<unk>",
                                                               special_tokens=["<pad>", "</s>", "<unk>"]))
    vocab = json.loads(unigram.to_str())["model"]["vocab"]
    return T5Tokenizer(vocab=[(piece, score) for piece, score in vocab], extra_ids=0)


def wav_bytes(seconds: float = 1.0, freq: float = 330.0, seed: int = 0) -> bytes:
    """A tone plus a little noise as 16-bit WAV bytes."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def app_env(tmp: Path) -> dict[str, str]:
    """Environment of an app run: the tiny models offered, the session folders under `tmp`."""
    return {"SOUNDSMITH_MODEL_DIR": str(tiny_model_dir()), "SOUNDSMITH_APP_TMP": str(tmp),
            "SOUNDSMITH_NOVELTY_INDEX": str(tmp / "no-index"),  # tests never read the machine's own corpus index
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
