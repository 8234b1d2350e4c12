"""Reading weight files and loading them strictly, with one-line errors that name the file and key.

Shared by the model folders (`MelVAE`, `Vocoder`, ...) and the public-checkpoint converters in
`soundsmith.pipelines`; `weights_fingerprint` identifies the weights a model was trained against. Loading never unpickles by default: safetensors, or
`torch.load(weights_only=True)`; a file that needs full unpickling is refused unless the caller
passes `trust_pickle=True`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from soundsmith.core.files import atomic_write, one_line
from torch import Tensor, nn

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def config_from_dict(cls: type, data: Mapping[str, Any], where: str, *, ignore: Iterable[str] = (),
                     metadata_prefix: str | None = "_", wrap_errors: bool = False) -> Any:
    """Build the config dataclass `cls` from a JSON dict; an unknown key is a one-line error naming it.

    Keys in `ignore` and keys starting with `metadata_prefix` (None: none) are metadata and skipped.
    `wrap_errors` turns the dataclass's own TypeError/ValueError into `ValueError("{where}: ...")`.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    skip = set(ignore)
    kept = {k: v for k, v in data.items()
            if k not in skip and not (metadata_prefix is not None and k.startswith(metadata_prefix))}
    unknown = sorted(k for k in kept if k not in known)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if not wrap_errors:
        return cls(**kept)
    try:
        return cls(**kept)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def find_weights(folder: str | os.PathLike, names: Iterable[str]) -> Path:
    """The first of `names` that exists in `folder` (safetensors first, by the caller's order)."""
    names = list(names)
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"no weights file in {folder} (looked for {', '.join(names)})")


def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Read a `.safetensors` file or a torch checkpoint (`.ckpt/.pt/.pth/.bin`) into a dict.

    A torch checkpoint is read with `torch.load(weights_only=True)`; if it holds Python objects
    beyond tensors and containers, it is refused unless `trust_pickle=True`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise IsADirectoryError(f"checkpoint is not a file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{path}: corrupt or truncated safetensors file ({one_line(err)})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise unpickling_error(path, err) from None
        log.warning("unpickling %s fully (trust_pickle=True)", path)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as err2:
            raise ValueError(f"{path}: corrupt or truncated checkpoint ({one_line(err2)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({one_line(err)})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


# What torch's weights-only unpickler says when a file holds Python objects rather than bad bytes, by
# version: "Unsupported global: GLOBAL x.y was not an allowed global by default" (2.4+), "Trying to load
# unsupported GLOBAL x.y whose module x is blocked" (2.13, os/subprocess/...), "Trying to call reduce for
# unrecognized function f", "Can only build Tensor, ... but got <class ...>".
_PICKLED_OBJECT = re.compile(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|Can only (?:build|create)[^\n]*?got (\S+)")


def pickled_object(err: BaseException) -> str | None:
    """The Python object a weights-only `torch.load` refused to build (e.g. `posix.system`), or None when
    its error is about unreadable bytes."""
    found = _PICKLED_OBJECT.search(str(err))
    if found is None:
        return None
    return next(group for group in found.groups() if group).rstrip(".,>'\"")


def unpickling_error(path: str | os.PathLike, err: BaseException) -> ValueError:
    """The one-line error for a failed `torch.load(weights_only=True)`: a file holding Python objects needs
    full unpickling (refused: it can run code), anything else is corrupt or truncated."""
    found = pickled_object(err)
    if found is None:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))  # torch 2.13 puts the cause on a line below
        return ValueError(f"{path}: corrupt or truncated checkpoint "
                          f"({detail.group(1).strip() if detail else one_line(err)[:120]})")
    return ValueError(f"{path}: needs full unpickling, which can run arbitrary code (it holds {found}); refusing "
                      "- pass trust_pickle=True (--trust-pickle) only if you trust its source")


def weights_error(path: str | os.PathLike, err: BaseException) -> ValueError | None:
    """The one-line error for a weights file a library failed to read (transformers' `from_pretrained`):
    a safetensors file with a bad header or missing bytes, or a pickle refused as above; None for other errors."""
    if isinstance(err, pickle.UnpicklingError):
        return unpickling_error(path, err)
    from safetensors import SafetensorError

    if isinstance(err, SafetensorError):
        return ValueError(f"{path}: corrupt or truncated safetensors file ({one_line(err)})")
    return None


def check_state_dict(expected: Mapping[str, Tensor], given: Mapping[str, Any], source: str | os.PathLike,
                     *, what: str = "model") -> None:
    """Raise a one-line ValueError naming `source` and the first missing/unexpected/misshaped key."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"{source}: missing key {missing[0]!r}{more} for the {what} "
                         "(wrong architecture or incomplete file?)")
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ValueError(f"{source}: unexpected key {unexpected[0]!r}{more} for the {what} "
                         "(wrong architecture?)")
    for key, ref in expected.items():
        value = given[key]
        if not isinstance(value, Tensor):
            raise ValueError(f"{source}: key {key!r} holds {type(value).__name__}, expected a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: key {key!r} has shape {list(value.shape)}, the {what} config expects "
                             f"{list(ref.shape)} (wrong architecture or config.json?)")


def load_strict(module: nn.Module, state_dict: Mapping[str, Any], source: str | os.PathLike,
                *, what: str = "model") -> None:
    """`module.load_state_dict(strict=True)` with the one-line error of `check_state_dict` first."""
    check_state_dict(module.state_dict(), state_dict, source, what=what)
    module.load_state_dict(dict(state_dict), strict=True)


def save_safetensors(state_dict: Mapping[str, Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write contiguous CPU tensors to `path` atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights, rounded to fp16 so a fp32 copy and its fp16 export agree.

    A UNet records the fingerprints of the VAE and CLAP it was trained against; loading a pipeline
    whose parts do not match them is refused (a UNet learned one VAE latent and one CLAP space; a new VAE
    or CLAP means a new UNet).
    """
    return state_fingerprint(module.state_dict())


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """`weights_fingerprint` of a state dict (name -> tensor): the hash of its floating-point tensors by
    name, rounded to fp16. A model carrying adapter layers passes its base weights under their plain names
    (soundsmith.gen.adapters.base_fingerprint)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if not tensor.is_floating_point():
            continue
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
