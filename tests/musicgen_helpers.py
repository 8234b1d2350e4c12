"""A tiny random MusicGen checkpoint in the published transformers layout, shared by the MusicGen and app tests:
`MusicgenForConditionalGeneration` (tiny T5 encoder, tiny EnCodec, tiny decoder) and its `MusicgenProcessor`,
with a T5 tokenizer built offline from a Unigram model trained here with the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path

# tiny EnCodec: hop 40 -> 200 frames/s at 8 kHz; 4 codebooks of 1024 codes at 8 kbps (transformers derives the
# number of codebooks from bandwidth / (frame rate x 10 bits), so the codebook size must be 1024 for 4)
SR = 8000
K = 4


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    texts = ["a jazzy piano trio", "rain on a tin roof", "a dog barks twice", "upbeat drums and bass",
             "thunder over the sea", "a calm acoustic guitar"] * 4
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=60, unk_token="<unk>",
                                                               special_tokens=["<pad>", "</s>", "<unk>"]))
    vocab = json.loads(unigram.to_str())["model"]["vocab"]  # [(piece, log-probability)], <pad> </s> <unk> first
    return T5Tokenizer(vocab=[(piece, score) for piece, score in vocab], extra_ids=0)


def write_tiny_musicgen(path: Path, *, max_length: int) -> Path:
    """Save the tiny MusicGen (seeded, so every call writes the same weights) with MusicGen's published
    generation defaults and a generation window of `max_length` tokens into `path`."""
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

    tokenizer = t5_tokenizer()
    text = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    audio = EncodecConfig(sampling_rate=SR, audio_channels=1, num_filters=4, num_residual_layers=1,
                          upsampling_ratios=[8, 5], codebook_size=1024, codebook_dim=16, hidden_size=16,
                          target_bandwidths=[8.0], num_lstm_layers=1, use_causal_conv=False, normalize=False,
                          chunk_length_s=None, overlap=None)
    decoder = MusicgenDecoderConfig(vocab_size=1024, num_codebooks=K, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, ffn_dim=32, max_position_embeddings=256,
                                    pad_token_id=1024, bos_token_id=1024)
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
    for layer in model.audio_encoder.quantizer.layers:  # a fresh EnCodec's codebooks are zeros: every code
        layer.codebook.embed.normal_()  # would decode to the same audio, so give them trained-like spread
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
    model.generation_config = GenerationConfig(decoder_start_token_id=1024, pad_token_id=1024, bos_token_id=1024,
                                               do_sample=True, guidance_scale=3.0, top_k=10, max_length=max_length)
    model.save_pretrained(str(path))
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=SR),
                      tokenizer=tokenizer).save_pretrained(str(path))
    return path
