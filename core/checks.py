"""Argument checks shared by the pipelines, the CLI and the app: each raises a one-line ValueError that
names the argument and the range it must be in."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` must be an int in [low, high]; else a ValueError naming `name` and the range."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        hi = "inf" if high is None else ("2**63-1" if high == MAX_SEED else str(high))
        raise ValueError(f"{name} must be an integer in [{low}, {hi}], got {value!r}")
    return int(value)


def check_seed_range(seed: int, num: int) -> int:
    """`seed` and the `num - 1` seeds after it must all be in [0, 2**63-1]; wrapping the last ones to 0 would
    silently repeat the outputs of seed 0."""
    check_int("seed", seed, 0, MAX_SEED)
    if seed + num - 1 > MAX_SEED:
        raise ValueError(f"seed {seed} is too large for {num} outputs: they get seeds seed, seed+1, ..., which must "
                         f"stay <= 2**63-1; use a seed <= {MAX_SEED - num + 1}")
    return seed


def check_text(name: str, text: str) -> str:
    """`text` must be valid Unicode text. Python turns command-line bytes that are not UTF-8 into lone
    surrogates ("rain \\udcff"), which no tokenizer takes (TypeError deep inside it); say so here, showing
    such bytes as \\xNN."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                        f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
        cut = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f"{name} '{cut}' is not valid UTF-8 text (bytes shown as \\xNN); type it again in a "
                         "UTF-8 terminal or save it as UTF-8") from None
    return text


def check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    """`value` must be a finite number in [low, high] ((low, high] if `low_open`); else a ValueError."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    too_low = v <= low if low_open else v < low
    if not ok or not math.isfinite(v) or too_low or v > high:
        raise ValueError(f"{name} must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return v
