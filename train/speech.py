"""Speech clips for the synthetic corpus: espeak-ng sentences in several languages, voices and rates.

espeak-ng ships inside the `espeakng-loader` wheel (the C library and its voice data); that package
only locates the files, so the C API is driven here with ctypes (no Python binding does what we need
without a system install). Output is 22050 Hz int16, converted to float and resampled.

Determinism. espeak-ng keeps hidden static state across utterances (the pitch-flutter index, the
glottal phase, the echo buffer) and seeds its noise generator from the clock, so the same text
synthesized twice in one process differs by a few samples. The only way to reset that state is to
unload the library: every clip therefore loads a fresh copy (`dlopen`), initializes it, seeds its
noise generator from our rng, and unloads it (`dlclose`). That costs ~4 ms per clip and gives
byte-identical output for the same rng state in any process, in any order.

Labels: {"domain": "speech", "language", "language_name", "voice", "voice_variant", "rate_wpm",
"rate", "pitch", "pitch_range", "text"}; "text" holds the words that start at least 0.12 s
before the clip ends (the last one may be cut off).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from ctypes import POINTER, c_char_p, c_int, c_long, c_short, c_size_t, c_uint, c_void_p
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from soundsmith.codecs.audio import check_sample_rate, resample
from soundsmith.core.vocabulary import LANGUAGES

# espeak voice variants (voices/!v/<name>); appended to the language as "de+f2". The klatt variants
# are left out: they run a different synthesizer and sound far more robotic.
VOICE_VARIANTS: dict[str, tuple[str, ...]] = {
    "male": ("m1", "m2", "m3", "m4", "m6", "m7"),
    "female": ("f1", "f2", "f3", "f4", "f5"),
}
# Speaking rate classes in words per minute (espeak's default is 175).
RATES: dict[str, tuple[int, int]] = {"slow": (110, 140), "normal": (155, 190), "fast": (215, 260)}
RATE_PROBS = (0.25, 0.5, 0.25)  # slow, normal, fast
PITCH = (30, 70)  # espeak base pitch 0-100 (50 = the voice's own), drawn per clip
PITCH_RANGE = (25, 80)  # espeak intonation range 0-100 (0 = monotone)
LEAD_S = (0.02, 0.15)  # silence before the first word
GAP_S = (0.2, 0.6)  # pause between sentences
PEAK = 0.9  # dry level; synth.py applies the gain augmentation afterwards
MAX_DURATION_S = 600.0
ESPEAK_SAMPLE_RATE = 22050
_SILENCE = 30  # |int16| at or below this counts as silence when trimming sentence edges
_FADE_S = 0.01  # fade-out where the clip's end cuts into speech, so there is no click
_HEARD_S = 0.12  # a word counts as heard if it starts at least this long before the clip ends

SENTENCES_FILE = Path(__file__).with_name("sentences.json")


@lru_cache(maxsize=1)
def sentences() -> dict[str, tuple[str, ...]]:
    """The bundled sentence lists, language code -> sentences (sentences.json)."""
    with open(SENTENCES_FILE, encoding="utf-8") as f:
        data = json.load(f)
    missing = sorted(set(LANGUAGES) - set(data))
    if missing:
        raise ValueError(f"{SENTENCES_FILE}: no sentences for languages {missing}")
    return {lang: tuple(data[lang]) for lang in LANGUAGES}


def render_speech(
    rng: np.random.Generator,
    duration_s: float,
    sample_rate: int,
    *,
    language: str | None = None,
    voice: str | None = None,
    rate: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Render one speech clip: sentences in one language and voice, back to back with short pauses.

    Args:
        rng: all randomness comes from it; the same state gives byte-identical audio.
        duration_s: clip length in seconds, in (0, 600].
        sample_rate: output rate in Hz.
        language, voice, rate: force a language code (LANGUAGES), "male"/"female", or
            "slow"/"normal"/"fast"; default None draws them. The rng is consumed the same way either way.

    Returns mono float32 `[T]` with T = round(duration_s * sample_rate), peak PEAK, and the labels.
    """
    sample_rate = check_sample_rate(sample_rate)
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:g}], got {duration_s}")
    for name, value, allowed in (("language", language, LANGUAGES), ("voice", voice, VOICE_VARIANTS),
                                 ("rate", rate, RATES)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    num_samples = int(round(duration_s * sample_rate))

    # 1. draw the speaker and the delivery (always all draws, then apply the overrides)
    langs = tuple(LANGUAGES)
    drawn_lang = langs[int(rng.integers(len(langs)))]
    drawn_voice = "female" if rng.random() < 0.5 else "male"
    variant_ix = int(rng.integers(1 << 30))
    drawn_rate = tuple(RATES)[int(rng.choice(len(RATES), p=RATE_PROBS))]
    rate_u = float(rng.random())
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    pitch_range = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    noise_seed = int(rng.integers(1, 2**31 - 1))
    language = language or drawn_lang
    voice = voice or drawn_voice
    rate = rate or drawn_rate
    variants = VOICE_VARIANTS[voice]
    variant = variants[variant_ix % len(variants)]
    lo, hi = RATES[rate]
    rate_wpm = int(round(lo + rate_u * (hi - lo)))
    params = _VoiceParams(f"{language}+{variant}", rate_wpm, pitch, pitch_range, noise_seed)

    # 2. lay sentences end to end (lead silence, sentence, pause, sentence, ...) until the clip is full
    lines = sentences()[language]
    need = int(np.ceil(duration_s * ESPEAK_SAMPLE_RATE)) + 64  # + margin for the resampler's edges
    lead_s = min(rng.uniform(*LEAD_S), 0.2 * duration_s)  # short clips must not be mostly silence
    pos = int(round(lead_s * ESPEAK_SAMPLE_RATE))
    pieces: list[tuple[int, np.ndarray]] = []  # (start sample at 22050 Hz, int16 audio)
    spoken: list[tuple[str, int, list[tuple[int, int]]]] = []  # (sentence, start, [(word end char, word start)])
    order = rng.permutation(len(lines))
    with _fresh_espeak(params) as speak:
        i = 0
        while pos < need:
            if i > 10_000:  # cannot happen with real sentences; guards against an endless loop
                raise RuntimeError(f"espeak-ng produced no audio for {params.voice}")
            if i and i % len(lines) == 0:
                order = rng.permutation(len(lines))  # long clips: another pass in a new order
            text = lines[order[i % len(lines)]]
            i += 1
            audio, words = speak(text)
            audio, words = _trim(audio, words)
            if audio.size == 0:
                continue
            pieces.append((pos, audio))
            spoken.append((text, pos, words))
            pos += audio.size + int(round(rng.uniform(*GAP_S) * ESPEAK_SAMPLE_RATE))

    # 3. one clip at 22050 Hz, then resample, crop to exactly T and fade where the end cuts speech
    clip22 = np.zeros(max(pos, need), np.float32)
    for start, audio in pieces:
        clip22[start:start + audio.size] = audio.astype(np.float32) / 32768.0
    wave = resample(clip22[:need], ESPEAK_SAMPLE_RATE, sample_rate)[:num_samples]  # [T]
    if wave.size < num_samples:  # the margin makes this rare; zero-pad the resampler's shortfall
        wave = np.pad(wave, (0, num_samples - wave.size))
    fade = min(int(_FADE_S * sample_rate), num_samples)
    wave[num_samples - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = float(np.abs(wave).max())
    if peak > 0:
        wave *= PEAK / peak
    wave = np.ascontiguousarray(wave, dtype=np.float32)

    labels = {
        "domain": "speech",
        "language": language,
        "language_name": LANGUAGES[language],
        "voice": voice,
        "voice_variant": variant,
        "rate_wpm": rate_wpm,
        "rate": rate,
        "pitch": pitch,
        "pitch_range": pitch_range,
        "text": _heard_text(spoken, (duration_s - _HEARD_S) * ESPEAK_SAMPLE_RATE),
    }
    return wave, labels


# --------------------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _VoiceParams:
    voice: str  # "de+f2"
    rate_wpm: int
    pitch: int
    pitch_range: int
    noise_seed: int


def _trim(audio: np.ndarray, words: list[tuple[int, int, int]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut silence off both ends of one sentence; word starts move with it. -> (audio, [(end char, start)])."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > _SILENCE)
    if loud.size == 0:
        return audio[:0], []
    first, last = int(loud[0]), int(loud[-1]) + 1
    return audio[first:last], [(pos + length, max(sample - first, 0)) for pos, length, sample in words]


def _heard_text(spoken: list[tuple[str, int, list[tuple[int, int]]]], end: float) -> str:
    """The sentences heard in the clip; the last one cut after the last word that starts before `end`."""
    out = []
    for text, start, words in spoken:
        if start >= end:
            break
        started = [char_end for char_end, sample in words if start + sample < end]
        if len(started) == len(words):
            out.append(text)  # every word starts inside the clip: keep the punctuation too
        elif started:
            out.append(text[:max(started)])
    return " ".join(out)


# espeak_EVENT (speak_lib.h). The union `id` is 8 bytes (int / const char* / char[8]).
class _Event(ctypes.Structure):
    _fields_ = [("type", c_int), ("unique_identifier", c_uint), ("text_position", c_int), ("length", c_int),
                ("audio_position", c_int), ("sample", c_int), ("user_data", c_void_p), ("id", ctypes.c_char * 8)]


_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_BUFFER_MS = 2000  # audio per callback; the default 60 ms means ~40 Python callbacks per sentence
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_SynthCallback = ctypes.CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))
_LOCK = threading.Lock()  # the library and the callback's buffers are process-global


class _Collector:
    """Receives espeak's synchronous callbacks: audio chunks and word events of the current sentence."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.words: list[tuple[int, int, int]] = []  # (0-based char position, length in chars, start sample)
        self.callback = _SynthCallback(self._collect)  # keep a reference: espeak holds a raw pointer to it

    def _collect(self, wav, num_samples, events) -> int:  # noqa: ANN001 (ctypes pointers)
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self.words.append((ev.text_position - 1, ev.length, ev.sample))
            i += 1
        return 0  # 0 = go on


_COLLECTOR: _Collector | None = None


class _fresh_espeak:
    """Context manager: load a fresh libespeak-ng, set the voice, yield `speak(text) -> (int16 [N], words)`.

    Unloads the library on exit so the next clip starts from the same state (module docstring).
    """

    def __init__(self, params: _VoiceParams):
        self.params = params

    def __enter__(self):  # noqa: ANN204
        global _COLLECTOR
        _LOCK.acquire()
        try:
            if _COLLECTOR is None:
                _COLLECTOR = _Collector()
            self.lib = lib = ctypes.CDLL(_library_path())
            _declare(lib)
            sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, _data_path().encode(), 0)
            if sr != ESPEAK_SAMPLE_RATE:
                raise RuntimeError(f"espeak-ng failed to initialize (returned {sr}; data at {_data_path()})")
            lib.espeak_ng_SetRandSeed(self.params.noise_seed)
            lib.espeak_SetSynthCallback(_COLLECTOR.callback)
            if lib.espeak_SetVoiceByName(self.params.voice.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {self.params.voice!r}")
            # Parameters after the voice: selecting a voice resets them.
            lib.espeak_SetParameter(_PARAM_RATE, self.params.rate_wpm, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, self.params.pitch, 0)
            lib.espeak_SetParameter(_PARAM_RANGE, self.params.pitch_range, 0)
        except BaseException:
            self._unload()
            raise
        return self._speak

    def _speak(self, text: str) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        assert _COLLECTOR is not None
        _COLLECTOR.chunks.clear()
        _COLLECTOR.words.clear()
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng failed on {text!r} (error {err})")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(_COLLECTOR.chunks) if _COLLECTOR.chunks else np.zeros(0, np.int16)
        return audio, list(_COLLECTOR.words)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._unload()

    def _unload(self) -> None:
        try:
            lib = getattr(self, "lib", None)
            if lib is not None:
                lib.espeak_Terminate()
                import _ctypes

                _ctypes.dlclose(lib._handle)
                self.lib = None
        finally:
            _LOCK.release()


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [c_int, c_int, c_char_p, c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [c_long]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetVoiceByName.argtypes = [c_char_p]
    lib.espeak_SetParameter.argtypes = [c_int, c_int, c_int]
    lib.espeak_Synth.argtypes = [c_void_p, c_size_t, c_uint, c_int, c_uint, c_uint, c_void_p, c_void_p]


@lru_cache(maxsize=1)
def _data_path() -> str:
    import espeakng_loader

    return str(espeakng_loader.get_data_path())


@lru_cache(maxsize=1)
def _library_path() -> str:
    """The library file to load per clip; a private copy if something else in this process holds it.

    dlclose only unloads a library nobody else has open. If another module loaded the wheel's
    libespeak-ng (e.g. a phonemizer), a copy under another name gives us an instance of our own.
    """
    import espeakng_loader

    path = os.path.realpath(espeakng_loader.get_library_path())
    if not _is_mapped(path):
        return path
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="soundsmith-espeak-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return shutil.copy(path, os.path.join(folder, "libespeak-ng-private.so"))


def _is_mapped(path: str) -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(line.rstrip().endswith(path) for line in f)
    except OSError:
        return False
