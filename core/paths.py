"""Paths that files name: a model's parts, a prompt file's reference clips. Each must stay in its tree.

A model folder's config.json links its parts by relative path ("unet", "../clap", "../mel-codec/vae"),
and a prompt file names reference clips relative to the reference folder. Such files may come from
someone else, so what they name must not reach outside the folders they belong to:

    resolve_inside("passwd", reference, [reference], where="prompts.jsonl:3", what="reference clip")
    model_link("../clap", models / "default-tokens", where="config.json", what="part 'clap'")

A model's links may lead into its models tree (the folder and its siblings: the parent folder, or the
tree of the pipeline it is a part of) and into soundsmith's own models/ folder (a training run's export
links the shipped mel codec). The check is on the path as written, made absolute and normalised (`..`
folded in), not on where symbolic links inside the tree lead: links are the choice of whoever owns the
disk (weights on a bigger drive), a path in a file is the choice of whoever wrote the file. The path
returned is the normalised one, so what is opened is what was checked. Torch-free: the prompt readers
use it too.

Where the shipped models are (`shipped_models`, the one lookup every default goes through): the models/
folder is package data of `soundsmith.models` (pyproject.toml), so it sits beside core/ in both layouts:

    a checkout (editable install):  <checkout>/core/paths.py                 <checkout>/models/default-ldm
    `pip install .` (the wheel):    site-packages/soundsmith/core/paths.py   site-packages/soundsmith/models/...

A model is chosen by `--model` (`--clap`, `--model-dir`, ...) first, else the shipped folder. The wheel
keeps models/'s layout, so the links between its folders ("../clap") stay inside the models tree. The
checkout's other folders (benchmarks/prompts, data/corpus) are not in the wheel: `checkout_folder` finds
them in a checkout and answers None in an installed copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# The folder that holds soundsmith's folders (core/, models/, ...): the checkout, or site-packages/soundsmith.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def shipped_models(name: str | None = None) -> Path:
    """soundsmith's models/ folder (package data when installed, the checkout's models/ otherwise), or the
    shipped model `name` inside it ("default-ldm", "clap", "labels"). Whether it exists is the caller's check."""
    folder = _PACKAGE_ROOT / "models"
    return folder / name if name else folder


def checkout_folder(*parts: str) -> Path | None:
    """A folder of the repository checkout that the wheel does not ship (`checkout_folder("benchmarks",
    "prompts")`, `checkout_folder("data", "corpus")`): its path when soundsmith runs from a checkout and the
    folder is there, else None (an installed copy has no checkout beside it)."""
    if not (_PACKAGE_ROOT / "pyproject.toml").is_file():  # site-packages/soundsmith holds no pyproject.toml
        return None
    folder = _PACKAGE_ROOT.joinpath(*parts)
    return folder if folder.is_dir() else None


SHIPPED_MODELS = shipped_models()  # the containment root of `model_link`, beside each model's own tree


def normalized(path: str | os.PathLike) -> Path:
    """`path` absolute with `.` and `..` folded in, symbolic links left as they are."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether normalised `path` is `root` or lies under it."""
    path, root = normalized(path), normalized(root)
    return path == root or root in path.parents


def models_tree(folder: str | os.PathLike) -> Path:
    """Where a model folder's parts may live: the folder itself and its siblings (its parent folder), so
    the shipped layout `models/default-tokens` -> `../clap` keeps working."""
    return normalized(folder).parent


def resolve_inside(name: str | os.PathLike, base: str | os.PathLike, roots: Sequence[str | os.PathLike], *,
                   where: str, what: str = "path") -> Path:
    """`base / name` (or `name` when absolute), normalised; a one-line ValueError unless it lies inside one
    of `roots`.

    Args:
        name: the path as the file writes it.
        base: the folder relative paths start from.
        roots: the folders it may lead into.
        where: the file (and field) that names it, for the message.
        what: what it is ("part 'clap'", "reference clip"), for the message.
    """
    text = os.fspath(name)
    if not text.strip():
        raise ValueError(f"{where}: empty {what}")
    target = normalized(Path(base) / text)  # an absolute `name` replaces `base`
    if not any(is_inside(target, root) for root in roots):
        raise ValueError(f"{where}: {what} {text!r} leads outside {normalized(roots[0])} (to {target}); "
                         "paths that a file names are followed only inside that folder")
    return target


def model_link(name: str | os.PathLike, folder: str | os.PathLike, *, tree: str | os.PathLike | None = None,
               where: str, what: str) -> Path:
    """A path that model `folder`'s config names (relative to `folder`), kept inside `tree` (default: the
    folder's models tree, `models_tree(folder)`) or the shipped models/ folder."""
    root = models_tree(folder) if tree is None else tree
    return resolve_inside(name, folder, [root, SHIPPED_MODELS], where=where, what=what)
