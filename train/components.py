"""Trainable components: name -> zero-argument factory returning its `train` function.

`soundsmith train COMPONENT --config FILE --data DIR --out DIR [--resume] [--max-steps N]` calls
`COMPONENTS[name]()(config=..., data=..., out=..., resume=..., max_steps=...)`. Each factory imports
its loop lazily, so listing the components stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable


def _vae() -> Callable:
    from .train_vae import train

    return train


def _vocoder() -> Callable:
    from .train_vocoder import train

    return train


def _clap() -> Callable:
    from .train_clap import train

    return train


def _codec() -> Callable:
    from .train_codec import train

    return train


def _unet() -> Callable:
    from .train_unet import train

    return train


def _cond_rvq() -> Callable:
    from .train_cond_rvq import train

    return train


def _kmeans() -> Callable:
    from .train_kmeans import train

    return train


def _mel_adapter() -> Callable:
    from .train_mel_adapter import train

    return train


def _tempo_reader() -> Callable:
    from .train_tempo_reader import train

    return train


def _mel_rvq() -> Callable:
    from .train_mel_rvq import train

    return train


def _token_lm(stage: str) -> Callable[[], Callable]:
    def factory() -> Callable:
        from .train_token_lm import stage_trainer

        return stage_trainer(stage)

    return factory


# train(config, data, out, resume, max_steps) -> the exported model folder
COMPONENTS: dict[str, Callable[[], Callable]] = {"vae": _vae, "vocoder": _vocoder, "clap": _clap, "codec": _codec,
                                                 "unet": _unet}
COMPONENTS.update({"mel-adapter": _mel_adapter})  # the universal HiFi-GAN's input mapping
COMPONENTS.update({"tempo-reader": _tempo_reader})  # the prompt's tempo, for tempo-conditioned UNets
COMPONENTS.update({"cond-rvq": _cond_rvq, "kmeans": _kmeans, "mel-rvq": _mel_rvq})  # the token backend's tokenizers
COMPONENTS.update({f"{stage}-lm": _token_lm(stage) for stage in ("semantic", "coarse", "fine")})  # its three LMs
