"""Tiny random latent-diffusion parts in our layout (seconds on a 2-core CPU), shared by the LDM tests."""

from __future__ import annotations

import torch
from soundsmith.codecs.mel_codec import MelLatentCodec
from soundsmith.codecs.mel_vae import MelVAE, MelVAEConfig
from soundsmith.codecs.vocoder import Vocoder, VocoderConfig
from soundsmith.gen.clap import ClapConfig, SoundsmithClap
from soundsmith.gen.conditioners import ClapConditioner
from soundsmith.gen.schedulers import default_noise_schedule
from soundsmith.gen.unet import build_unet, tiny_unet_config
from soundsmith.pipelines.ldm import LDMConfig, LDMPipeline

TINY_CLAP = ClapConfig(embed_dim=32, stem_channels=4, conv_channels=(8, 8), frame_dim=16, temporal_dilations=(2,),
                       projection_hidden=32, window_s=2.0)
TINY_VAE = MelVAEConfig(n_mels=16, latent_channels=4, block_out_channels=(8, 16, 16), norm_num_groups=8,
                        mid_block_add_attention=False)
TINY_VOCODER = VocoderConfig(model_in_dim=16, upsample_initial_channel=32, resblock_kernel_sizes=(3,),
                             resblock_dilation_sizes=((1,),))
# windows of 0.64 s (16 latent frames) so long-form tests stay short
TINY_LDM = LDMConfig(num_inference_steps=3, window_s=0.64, window_overlap_s=0.16, duration_s=0.5, max_duration_s=8.0)


def loud_vocoder(vocoder: Vocoder) -> Vocoder:
    """transformers initialises HiFi-GAN with std 0.01 (a silent generator); re-draw the convolutions so a
    random vocoder makes audible, CLAP-distinguishable noise."""
    with torch.no_grad():
        for module in vocoder.hifigan.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
                module.weight.mul_(2.0)
    return vocoder


def tiny_codec(seed: int = 0) -> MelLatentCodec:
    torch.manual_seed(seed)
    return MelLatentCodec(MelVAE(TINY_VAE), loud_vocoder(Vocoder(TINY_VOCODER))).eval()


def tiny_clap(encoder=None, seed: int = 0) -> SoundsmithClap:
    torch.manual_seed(seed)
    return SoundsmithClap(TINY_CLAP, text_encoder=encoder).eval()


def tiny_pipeline(encoder=None, *, cross_attention: bool = False, seed: int = 0, **config) -> LDMPipeline:
    """A random LDMPipeline: UNet (16, 32) with attention at level 2, 16-bin VAE, small vocoder, tiny CLAP."""
    clap = tiny_clap(encoder, seed)
    torch.manual_seed(seed)
    unet = build_unet(tiny_unet_config(latent_channels=4, latent_bins=4, condition_dim=32,
                                       cross_attention=cross_attention, token_dim=384))
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)  # noise predictions of a trained model's size
    cfg = LDMConfig(**{**TINY_LDM.to_dict(), "cross_attention": cross_attention, **config})
    # v-prediction: a random UNet's x0 estimate stays O(1); with epsilon prediction its errors are divided by
    # alpha_T (~0.006), leaving latents of ~200 that drive the VAE and vocoder far outside a trained range
    schedule = default_noise_schedule("v_prediction")
    pipe = LDMPipeline(unet, tiny_codec(seed), ClapConditioner(clap), schedule, cfg)
    pipe.progress_bar = False
    return pipe
