"""Metric logging for training runs: JSONL + TensorBoard + a tqdm bar, and audio/mel samples on disk.

Only the main process logs (pass `enabled=accelerator.is_main_process`). On resume from step S,
rows after S left by the interrupted run are dropped from `metrics.jsonl` and TensorBoard is told to
purge them (`purge_step`), so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.codecs.audio import write_audio
from torch import Tensor


class MetricsLogger:
    """`log(step, {"loss": ..})` appends one JSON line to `run_dir/metrics.jsonl` and writes TensorBoard
    scalars under `run_dir/tensorboard/`.

    Args:
        run_dir: the run folder (created if missing).
        enabled: False makes every call a no-op (non-main processes).
        resume_step: when resuming, the checkpoint's step: later rows of the old run are dropped.
        tensorboard: also write TensorBoard event files (default True).
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _row_step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                        purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, metrics: Mapping[str, float | Tensor]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def log_audio(self, step: int, tag: str, wave: Tensor | np.ndarray, sample_rate: int) -> None:
        """One clip `[T]` or `[1, T]` into TensorBoard (the WAV on disk comes from `save_samples`)."""
        if self.writer is not None:
            if isinstance(wave, Tensor):  # a GPU (or grad-tracking, or bf16) tensor has no numpy view
                wave = wave.detach().float().cpu().numpy()
            self.writer.add_audio(tag, np.asarray(wave, dtype=np.float32).reshape(-1).clip(-1, 1), step,
                                  sample_rate=sample_rate)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# steps/s always (tqdm's default flips to s/step below one step a second) and the time left, e.g.
# "unet:  12%|##        | 36/300 [01:02 elapsed, 0.58step/s, ETA 07:38], loss=0.0412"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, {rate_noinv_fmt}, ETA {remaining}]{postfix}"


def progress_bar(total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train", unit: str = "step"
                 ) -> Any:
    """A tqdm bar counting optimizer steps (or `unit`s), showing steps/s and the ETA (`BAR_FORMAT`); on a resumed
    run the rate counts the steps of this process only. Update the loss with `bar.set_postfix(loss=...)`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit, dynamic_ncols=True,
                bar_format=BAR_FORMAT)


def save_samples(folder: str | os.PathLike, name: str, sample_rate: int, *, wave: Tensor | np.ndarray | None = None,
                 mels: Mapping[str, Tensor | np.ndarray] | None = None, hop_length: int = 160) -> list[Path]:
    """Write `name.wav` (wave `[T]` or `[1, T]`) and `name.png` (log-mels `[F, S]` stacked top to bottom,
    e.g. {"target": m1, "reconstruction": m2}) into `folder`; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if wave is not None:
        wave = np.asarray(_numpy(wave), dtype=np.float32).reshape(1, -1)
        written.append(write_audio(folder / f"{name}.wav", np.clip(wave, -1.0, 1.0), sample_rate))
    if mels:
        written.append(_mel_png(folder / f"{name}.png", mels, sample_rate, hop_length))
    return written


def _mel_png(path: Path, mels: Mapping[str, Tensor | np.ndarray], sample_rate: int, hop_length: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    arrays = {k: np.asarray(_numpy(v), dtype=np.float32) for k, v in mels.items()}
    low = min(float(a.min()) for a in arrays.values())
    high = max(float(a.max()) for a in arrays.values())
    fig, axes = plt.subplots(len(arrays), 1, figsize=(8, 2.2 * len(arrays)), squeeze=False)
    for ax, (title, mel) in zip(axes[:, 0], arrays.items()):
        seconds = mel.shape[-1] * hop_length / sample_rate
        ax.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, extent=(0, seconds, 0, mel.shape[0]))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _scalar(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 2**62  # a line torn by a kill: dropped
