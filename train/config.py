"""Training configs: a flat dataclass per component, read from and saved to JSON, with typed overrides.

nanoGPT's `configurator.py` `exec`s files to overwrite globals and calls itself a "terrible idea"; we
keep its aim (flat keys, typed overrides, an unknown key is an error) with plain dataclasses:

    @dataclass
    class MelRVQTrainConfig(Config):
        levels: int = bounded(8, 1, 64)   # range checked by Config.__post_init__

    cfg = load_config(MelRVQTrainConfig, "my.json", overrides=["levels=4", "mel_codec=models/x"])
    save_config(cfg, run_dir / "config.json")

The fields every gradient-trained run has (seed, steps, optimizer, cadence) are declared once, in
`train/loop.py`'s `RunConfig`; a component's config extends it and gives an inherited field another
default with a keyword of its class statement, keeping the field's type and range:

    @dataclass
    class VAETrainConfig(RunConfig, warmup_steps=100):
        kl_weight: float = bounded(1e-6, 0.0)

Every mistake is one line naming the file and the key: an unknown key (with the closest known
one), a value of the wrong type, or a value out of range.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from soundsmith.core.files import write_json

C = TypeVar("C")

CONFIGS = Path(__file__).resolve().parent / "configs"  # each component's default config: <component>.json


def bounded(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            choices: Iterable[Any] | None = None) -> Any:
    """A dataclass field whose value must lie in [low, high] ((low, high] if `low_open`) or in `choices`."""
    meta = {"range": (low, high, low_open)} if choices is None else {"choices": tuple(choices)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_ranges(cfg: Any) -> None:
    """Raise `ValueError("field 'x' must be in [a, b], got v")` for the first field out of its range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            allowed = ", ".join(repr(c) for c in f.metadata["choices"])
            raise ValueError(f"field '{f.name}' must be one of {allowed}, got {value!r}")
        if "range" in f.metadata and value is not None:
            low, high, low_open = f.metadata["range"]
            too_low = low is not None and (value <= low if low_open else value < low)
            if too_low or (high is not None and value > high):
                lo = "(" if low_open else "["
                hi = "inf" if high is None else _num(high)
                raise ValueError(f"field '{f.name}' must be in {lo}{_num(low)}, {hi}], got {value!r}")


@dataclasses.dataclass
class Config:
    """Base of the config dataclasses: checks every `bounded` field after `__init__` (a subclass with
    checks of its own calls `super().__post_init__()` first), and takes keywords of a subclass's class
    statement as other defaults for the fields it inherits (`override_defaults`)."""

    def __init_subclass__(cls, **defaults: Any) -> None:
        super().__init_subclass__()
        override_defaults(cls, defaults)

    def __post_init__(self) -> None:
        check_ranges(self)


def override_defaults(cls: type, defaults: Mapping[str, Any]) -> None:
    """Give fields that `cls` inherits from its dataclass base other defaults; each keeps its type, its
    range or choices and its place in the field order. Called by `Config.__init_subclass__`, which runs
    before `@dataclass` turns the class body into fields.

    Raises:
        TypeError: a name that is not a field of the base, or one the class body declares again.
    """
    if not defaults:
        return
    base = next((b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)), None)
    inherited = {f.name: f for f in dataclasses.fields(base)} if base is not None else {}
    hints = typing.get_type_hints(base) if base is not None else {}
    annotations = cls.__dict__.get("__annotations__")
    if annotations is None:  # a body without annotations of its own
        annotations = {}
        cls.__annotations__ = annotations
    for name, value in defaults.items():
        if name not in inherited:
            raise TypeError(f"{cls.__name__}: {name!r} is not a field of {getattr(base, '__name__', 'a base')}")
        if name in annotations:
            raise TypeError(f"{cls.__name__}: {name!r} is given a default twice (class keyword and body)")
        meta = inherited[name].metadata
        annotations[name] = hints[name]
        if isinstance(value, (dict, list)):
            setattr(cls, name, dataclasses.field(default_factory=lambda v=value: type(v)(v), metadata=meta))
        else:
            setattr(cls, name, dataclasses.field(default=value, metadata=meta))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the config as indented JSON, atomically."""
    return write_json(path, config_to_dict(cfg))


def load_config(cls: type[C], path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | Iterable[str] | None = None) -> C:
    """Build `cls` from its defaults, then the JSON file `path` (if given), then `overrides`.

    Args:
        cls: a config dataclass.
        path: JSON object whose keys are field names; missing keys keep the dataclass default.
        overrides: a mapping, or strings "key=value" where value is parsed as JSON if it can be
            (`lr=1e-3`, `betas=[0.8,0.99]`, `schedule=cosine`).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: invalid JSON, an unknown key, a value of the wrong type or out of range; the
            message is one line naming the file (or "override") and the key.
    """
    values: dict[str, Any] = {}
    source: dict[str, str] = {}  # field -> where its value came from, to blame a bad value on its source
    where = "override"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a JSON object of field: value, got {type(data).__name__}")
        values.update(_typed(cls, data, str(path)))
        source.update(dict.fromkeys(data, str(path)))
        where = str(path)
    if overrides is not None:
        parsed = _parse_overrides(overrides)
        values.update(_typed(cls, parsed, "override"))
        source.update({key: f"override {key}={json.dumps(value)}" for key, value in parsed.items()})
    try:
        return cls(**values)
    except ValueError as err:
        named = re.match(r"field '(\w+)'", str(err))  # check_ranges names the field
        raise ValueError(f"{source.get(named.group(1), where) if named else where}: {err}") from None


# ---------------------------------------------------------------------------------------- internals


def _parse_overrides(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override: expected key=value, got {item!r}")
        try:
            parsed[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key.strip()] = text  # a bare word is a string: schedule=cosine
    return parsed


def _typed(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check keys against the fields of `cls` and convert each value to the field's declared type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(fields))})"
            raise ValueError(f"{where}: unknown key '{key}' for {cls.__name__}{hint}")
        try:
            out[key] = _convert(value, hints[key])
        except TypeError as err:
            raise ValueError(f"{where}: field '{key}' {err}, got {value!r}") from None
    return out


def _convert(value: Any, hint: Any) -> Any:
    """`value` as type `hint` (int, float, bool, str, tuple[...], dict, X | None); TypeError if not."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg)
            except TypeError as err:
                errors.append(str(err))
        raise TypeError(" or ".join(errors) + (" or null" if type(None) in args else ""))
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise TypeError("must be an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError("must be a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise TypeError(f"must be a list of {len(args)} values")
        return tuple(_convert(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError("must be a JSON object")
        return dict(value)
    return value


def _num(x: float | None) -> str:
    return "-inf" if x is None else f"{x:g}" if isinstance(x, float) else str(x)
