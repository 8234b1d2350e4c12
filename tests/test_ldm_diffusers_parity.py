"""Our latent-diffusion pipeline against diffusers' own AudioLDMPipeline / MusicLDMPipeline.

Tiny random pipelines are saved in exactly diffusers' layout (model_index.json, unet/, vae/, vocoder/,
text_encoder/, tokenizer/, scheduler/ [, feature_extractor/]); `load_pipeline` must load them and give
the same waveform as diffusers for the same prompt, seed, scheduler and steps (max abs diff <= 1e-4,
fp32). The parts mirror the published layouts: a 4-level UNet (DownBlock2D + 3 x CrossAttnDownBlock2D,
2 layers per block, FiLM condition concatenated), a 3-level 1-channel VAE, a SpeechT5HifiGan with
AudioLDM's upsampling (5, 4, 2, 2, 2) and kernels (16, 16, 8, 4, 4), a RoBERTa-BPE tokenizer built
offline and a CLAP text tower (AudioLDM: ClapTextModelWithProjection; MusicLDM: ClapModel +
ClapFeatureExtractor, whose audio tower re-ranks the candidates).
"""

import json
import warnings

import numpy as np
import pytest
import torch
from soundsmith.pipelines import load_pipeline

# diffusers' schedulers trip a numpy 2 deprecation (np.array(..., copy=False) on a tensor): not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


TOL = 1e-4
VOCAB_EXTRA = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("o", "n")]


def tiny_tokenizer():
    """RoBERTa's byte-level BPE format: the 256 byte symbols + a few merges (no download)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for a, b in VOCAB_EXTRA:
        vocab[a + b] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=VOCAB_EXTRA, model_max_length=77)


def text_config(vocab_size: int) -> dict:
    # max_position_embeddings 514 as in laion/clap-htsat-unfused: diffusers pads the unconditional
    # prompt to 512 tokens
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=514, projection_dim=32)


def tiny_parts():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    blocks = (16, 16, 32, 32)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=blocks, layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        cross_attention_dim=blocks, attention_head_dim=2, norm_num_groups=8,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=32, class_embeddings_concat=True)
    with torch.no_grad():  # a random UNet predicts noise of std ~10; a trained one ~1, which keeps the
        unet.conv_out.weight.mul_(0.1)  # latents at a trained model's scale instead of blowing up to ~40
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        norm_num_groups=8, layers_per_block=1, scaling_factor=0.9392935633659363)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16000, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False))
    # transformers initialises HiFi-GAN convolutions with std 0.01, which makes a silent vocoder; re-draw
    # them (PyTorch's default, x2) so the compared waveforms carry real signal (std ~0.1)
    with torch.no_grad():
        for module in vocoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
                module.weight.mul_(2.0)
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return unet, vae, vocoder, scheduler


@pytest.fixture(scope="module")
def audioldm_folder(tmp_path_factory):
    from diffusers import AudioLDMPipeline
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    unet, vae, vocoder, scheduler = tiny_parts()
    tokenizer = tiny_tokenizer()
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(**text_config(len(tokenizer)))).eval()
    folder = tmp_path_factory.mktemp("audioldm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AudioLDMPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         vocoder=vocoder).save_pretrained(folder)
    return folder


def reference_audioldm(folder, scheduler_name=None):
    from diffusers import AudioLDMPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = AudioLDMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if scheduler_name is not None:
        from soundsmith.gen.schedulers import make_scheduler

        pipe.scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
    return pipe


def ours(folder):
    pipe = load_pipeline(folder)
    pipe.progress_bar = False
    return pipe


@pytest.fixture(scope="module")
def audioldm_pair(audioldm_folder):
    """(diffusers' pipeline, ours) loaded once from the folder; tests swap diffusers' scheduler."""
    return reference_audioldm(audioldm_folder), ours(audioldm_folder)


def test_layout_is_diffusers(audioldm_folder):
    index = json.loads((audioldm_folder / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert index["text_encoder"] == ["transformers", "ClapTextModelWithProjection"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert not (audioldm_folder / "config.json").exists()


@pytest.mark.parametrize("scheduler", [None, "dpmsolver++", "euler", "heun", "unipc"])
def test_audioldm_same_waveform(audioldm_pair, scheduler):
    """Same prompt, seed, scheduler, steps -> same waveform; 0.97 s exercises the length rounding + crop."""
    from soundsmith.gen.schedulers import make_scheduler

    ref_pipe, pipe = audioldm_pair
    folder_scheduler = ref_pipe.scheduler
    if scheduler is not None:
        ref_pipe.scheduler = make_scheduler(scheduler, folder_scheduler.config)
    assert pipe.config.scheduler == "ddim"  # the folder's own scheduler is the default
    ref = ref_pipe("a dog barks", audio_length_in_s=0.97, num_inference_steps=4, guidance_scale=2.5,
                   generator=torch.Generator().manual_seed(7), output_type="np").audios  # [1, T]
    ref_pipe.scheduler = folder_scheduler
    out = pipe("a dog barks", duration_s=0.97, num_inference_steps=4, guidance_scale=2.5, seed=7,
               scheduler=scheduler, watermark=False, loudness_lufs=None)
    assert out.audios.shape == (1, 1, ref.shape[-1]) == (1, 1, int(0.97 * 16000))
    assert ref.std() > 0.01  # a real signal, not a comparison of silences
    assert np.abs(out.audios[:, 0].numpy() - ref).max() <= TOL
    assert out.clap_scores is None  # AudioLDM's text-only CLAP has no audio tower


def test_audioldm_batch_with_negative_prompts(audioldm_pair):
    """Two prompts with negative prompts; our seeds s, s+1 = diffusers' list of per-output generators."""
    ref_pipe, pipe = audioldm_pair
    prompts, negatives = ["the rain on a roof", "a train horn"], ["wind", "the noise"]
    ref = ref_pipe(prompts, negative_prompt=negatives, audio_length_in_s=0.64, num_inference_steps=3,
                   guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in (11, 12)]).audios
    out = pipe(prompts, negative_prompt=negatives, duration_s=0.64, num_inference_steps=3, guidance_scale=3.0,
               seed=11, watermark=False, loudness_lufs=None)
    assert out.seeds == [11, 12]
    assert np.abs(out.audios[:, 0].numpy() - ref).max() <= TOL


def test_audioldm_without_guidance_and_default_length(audioldm_pair):
    """guidance <= 1 disables CFG in both; no duration -> unet.sample_size * 4 * 0.01 s (1.28 s here)."""
    ref_pipe, pipe = audioldm_pair
    ref = ref_pipe("a bell", num_inference_steps=2, guidance_scale=1.0,
                   generator=torch.Generator().manual_seed(3)).audios
    out = pipe("a bell", num_inference_steps=2, guidance_scale=1.0, seed=3, watermark=False, loudness_lufs=None)
    assert ref.shape[-1] == out.audios.shape[-1] == 20480
    assert np.abs(out.audios[:, 0].numpy() - ref).max() <= TOL


def test_our_layout_round_trip_and_library_loading(audioldm_pair, tmp_path):
    """Saved in our layout, the pipeline gives the same audio; its parts load in diffusers/transformers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import ClapTextModelWithProjection, SpeechT5HifiGan

    pipe = audioldm_pair[1]
    before = pipe("a dog barks", duration_s=0.5, num_inference_steps=2, seed=1, watermark=False, loudness_lufs=None).audios
    pipe.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["backend"] == "ldm" and config["null_condition"] == "empty_text"
    again = ours(tmp_path / "ours")("a dog barks", duration_s=0.5, num_inference_steps=2, seed=1, watermark=False, loudness_lufs=None)
    assert torch.allclose(before, again.audios, atol=1e-6)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "ours" / "unet")
    assert torch.equal(unet.conv_in.weight, pipe.unet.conv_in.weight)
    vae = AutoencoderKL.from_pretrained(tmp_path / "ours" / "vae")
    assert torch.equal(vae.decoder.conv_out.weight, pipe.codec.vae.autoencoder.decoder.conv_out.weight)
    voc = SpeechT5HifiGan.from_pretrained(tmp_path / "ours" / "vocoder")
    assert torch.equal(voc.conv_post.weight, pipe.codec.vocoder.hifigan.conv_post.weight)
    ClapTextModelWithProjection.from_pretrained(tmp_path / "ours" / "clap")


# --------------------------------------------------------------------------------------------- MusicLDM


@pytest.fixture(scope="module")
def musicldm_folder(tmp_path_factory):
    from diffusers import MusicLDMPipeline
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel

    unet, vae, vocoder, scheduler = tiny_parts()
    tokenizer = tiny_tokenizer()
    torch.manual_seed(1)
    audio = ClapAudioConfig(spec_size=256, window_size=8, num_mel_bins=64, depths=[1, 1], num_attention_heads=[1, 2],
                            hidden_size=32, patch_embeds_hidden_size=16, projection_hidden_size=32, patch_size=4,
                            patch_stride=(4, 4))
    text = text_config(len(tokenizer))
    text.pop("projection_dim")
    clap = ClapModel(ClapConfig(text_config=text, audio_config=audio.to_dict(), projection_dim=32)).eval()
    folder = tmp_path_factory.mktemp("musicldm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MusicLDMPipeline(vae=vae, text_encoder=clap, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                         vocoder=vocoder, feature_extractor=ClapFeatureExtractor(truncation="rand_trunc")
                         ).save_pretrained(folder)
    return folder


def reference_musicldm(folder):
    """diffusers' MusicLDMPipeline on the folder. It was written for transformers 4, whose
    `ClapModel.get_text_features` returned the (normalised) tensor; transformers 5 wraps it in a
    ModelOutput (`pooler_output`), so the reference gets a ClapModel returning the tensor again."""
    from diffusers import MusicLDMPipeline
    from transformers import ClapModel

    class Transformers4ClapModel(ClapModel):
        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = Transformers4ClapModel.from_pretrained(folder / "text_encoder").eval()
        pipe = MusicLDMPipeline.from_pretrained(folder, text_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_musicldm_same_waveforms_and_ranking(musicldm_folder):
    """Two candidates for one prompt, re-ranked by the CLAP audio tower in both pipelines."""
    ref_pipe, pipe = reference_musicldm(musicldm_folder), ours(musicldm_folder)
    assert pipe.config.num_inference_steps == 200 and pipe.config.guidance_scale == 2.0  # MusicLDM's defaults
    ref = ref_pipe("the piano", audio_length_in_s=0.64, num_inference_steps=3, num_waveforms_per_prompt=2,
                   generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).audios
    out = pipe("the piano", duration_s=0.64, num_inference_steps=3, num_waveforms_per_prompt=2, seed=5,
               watermark=False, loudness_lufs=None)
    assert np.abs(out.audios[:, 0].numpy() - ref).max() <= TOL
    assert out.clap_scores[0] >= out.clap_scores[1] and sorted(out.seeds) == [5, 6]
    unranked = pipe("the piano", duration_s=0.64, num_inference_steps=3, num_waveforms_per_prompt=2, seed=5,
                    rerank=False, watermark=False, loudness_lufs=None)
    assert unranked.seeds == [5, 6]


# ------------------------------------------------------------------- original AudioLDM .ckpt (UNet + CLAP)


def to_ldm_unet(sd: dict, layers: int, attention: list[bool]) -> dict:
    """diffusers UNet2DConditionModel keys -> latent-diffusion openaimodel keys (the inverse, by hand)."""
    import re

    step, levels = layers + 1, len(attention)
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "class_embedding": "film_emb", "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    out = {}
    for key, value in sd.items():
        head, leaf = key.rsplit(".", 1)
        if head in top:
            out[f"{top[head]}.{leaf}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", head):
            out[f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.0.{res[m[3]]}.{leaf}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", head):
            out[f"input_blocks.{1 + int(m[1]) * step + layers}.0.op.{leaf}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)", head):
            out[f"middle_block.{2 * int(m[1])}.{res[m[2]]}.{leaf}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", head):
            out[f"output_blocks.{int(m[1]) * step + int(m[2])}.0.{res[m[3]]}.{leaf}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", head):
            has_attention = attention[levels - 1 - int(m[1])]
            out[f"output_blocks.{int(m[1]) * step + layers}.{2 if has_attention else 1}.conv.{leaf}"] = value
        else:
            raise AssertionError(f"unmapped test key {key}")
    return out


def ldm_layout_unet(in_channels: int, condition_dim: int):
    """A 3-level AudioLDM-layout UNet (2 layers per level, 32 GroupNorm groups and 32-channel heads as
    latent-diffusion's openaimodel hard-codes them) with every tensor distinct."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    blocks = (32, 32, 64)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=in_channels, out_channels=in_channels, block_out_channels=blocks,
        layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=blocks,
        attention_head_dim=(1, 1, 2), norm_num_groups=32, class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=condition_dim, class_embeddings_concat=True).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def test_unet_inverse_matches_diffusers_reference():
    """The test's own inverse mapping agrees with diffusers' converter (convert_from_ckpt), so the converter
    test below checks against an independent layout, not against itself."""
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_unet_checkpoint

    unet = ldm_layout_unet(8, 24)
    sd = unet.state_dict()
    original = {"model.diffusion_model." + k: v for k, v in
                to_ldm_unet(sd, 2, [False, True, True]).items() if not k.startswith("film_emb")}
    reference = convert_ldm_unet_checkpoint(original, {"layers_per_block": 2, "class_embed_type": None,
                                                        "addition_embed_type": None})
    expected = {k: v for k, v in sd.items() if not k.startswith("class_embedding")}
    assert sorted(reference) == sorted(expected)
    assert all(torch.equal(reference[k], expected[k]) for k in expected)


def test_original_audioldm_checkpoint_converts(tmp_path):
    from soundsmith.pipelines.convert import CONVERTERS
    from soundsmith.pipelines.convert_audioldm import unet_from_checkpoint
    from test_convert_audioldm import original_checkpoint, reference_models
    from test_convert_clap import tiny_clap_model, tiny_roberta_tokenizer, to_laion_layout

    vae, voc = reference_models()
    tokenizer, vocab, merges = tiny_roberta_tokenizer()
    clap = tiny_clap_model(len(tokenizer), fused=False)
    unet = ldm_layout_unet(8, clap.config.projection_dim)
    ckpt = original_checkpoint(vae, voc)
    state = ckpt["state_dict"]
    state.update({"model.diffusion_model." + k: v.clone() for k, v in
                  to_ldm_unet(unet.state_dict(), 2, [False, True, True]).items()})
    laion = to_laion_layout(clap)["state_dict"]
    state.update({"cond_stage_model.model." + k.removeprefix("module."): v for k, v in laion.items()})
    path = tmp_path / "audioldm-tiny.ckpt"
    torch.save(ckpt, path)

    with pytest.raises(FileNotFoundError, match="carry no tokenizer"):
        CONVERTERS["audioldm"]()(path, tmp_path / "out")
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))  # laion_clap's tokenizer files beside the .ckpt
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    out = CONVERTERS["audioldm"]()(path, tmp_path / "out")
    pipe = ours(out)
    assert pipe.config.null_condition == "empty_text" and pipe.config.scheduler == "ddim"
    converted = pipe.unet.state_dict()
    assert all(torch.equal(converted[k], v) for k, v in unet.state_dict().items())
    text = ["a dog barks", "the rain"]
    batch = tokenizer(text, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(clap.get_text_features(**batch).pooler_output, dim=-1)
    assert (pipe.conditioner.embed_text(text) - expected).abs().max() <= 1e-5
    result = pipe("a dog barks", duration_s=0.32, num_inference_steps=2, num_waveforms_per_prompt=2, seed=0)
    assert result.audios.shape == (2, 1, 5120) and result.clap_scores is not None  # the audio tower re-ranks

    # the EMA copy of the UNet (latent-diffusion names it model_ema.<name without dots>)
    ema = {k: v for k, v in state.items()}
    for k in [k for k in state if k.startswith("model.diffusion_model.")]:
        ema["model_ema." + "".join(k.split(".")[1:])] = state[k] * 0.5
    assert torch.equal(unet_from_checkpoint(ema, "x", extract_ema=True).conv_in.weight, unet.conv_in.weight * 0.5)
