"""Offline speech synthesis with eSpeak NG, from the ``espeakng-loader`` wheel (library and data included).

Used to make small speech data sets without downloading anything (the keyword-spotting example, tests and
benchmarks). Driven through ``ctypes`` in synchronous retrieval mode: ``espeak_Synth`` returns once the whole
utterance has been passed to our callback, so no audio device and no threads are involved.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import numpy as np

from dltrain.errors import ConfigurationError
from dltrain.plugins import require

__all__ = ["Espeak", "list_variants"]

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """The eSpeak NG synthesizer of this process (the library keeps global state, so this is a singleton).

    Example:
        >>> tts = Espeak()
        >>> wave = tts.synthesize("seven", voice="en+f3", rate=150, pitch=60)
        >>> wave.dtype, tts.sample_rate
        (dtype('float32'), 22050)
    """

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __new__(cls) -> Espeak:
        """The process's one instance, set up on first use."""
        with cls._lock:
            if cls._instance is None:
                inst = super().__new__(cls)
                inst._setup()
                cls._instance = inst
            return cls._instance

    def _setup(self) -> None:
        loader: Any = require("espeakng_loader", plugin="audio", extra="audio")
        lib = ctypes.CDLL(loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        data = Path(loader.get_data_path())
        # The path argument is the folder that *contains* espeak-ng-data.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise ConfigurationError(f"espeak-ng failed to initialise with data at {data}")
        self._lib = lib
        self._data = data
        self.sample_rate: int = int(rate)
        self._chunks: list[np.ndarray] = []

        def on_audio(wav: Any, count: int, events: Any) -> int:
            if wav and count > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self._callback = _SYNTH_CALLBACK(on_audio)  # kept on self: ctypes callbacks must outlive their use
        lib.espeak_SetSynthCallback(self._callback)

    def synthesize(
        self, text: str, *, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> np.ndarray:
        """Speak ``text``; return a mono float32 waveform at :attr:`sample_rate` Hz.

        Args:
            text: UTF-8 text.
            voice: a language (``"en"``, ``"en-us"``, ``"en-gb-scotland"``) optionally with a variant
                (``"en+m3"``, ``"en-us+f2"``); see :func:`list_variants`.
            rate: words per minute, 80 to 450 (175 is normal).
            pitch: base pitch 0 to 100 (50 is normal).
            pitch_range: intonation range 0 (monotone) to 100.

        Raises:
            ConfigurationError: unknown voice, or a parameter espeak refuses.
        """
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise ConfigurationError(f"espeak-ng has no voice {voice!r}; try 'en', 'en-us' or 'en+m3'")
            for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range)):
                if self._lib.espeak_SetParameter(_PARAM[name], int(value), 0) != _EE_OK:
                    raise ConfigurationError(f"espeak-ng refused {name}={value}")
            self._chunks.clear()
            raw = text.encode("utf-8")
            err = self._lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise ConfigurationError(f"espeak-ng failed to synthesise {text!r} (error {err})")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            self._chunks.clear()
        return pcm.astype(np.float32) / 32768.0


def list_variants() -> list[str]:
    """Names of the voice variants shipped with espeak-ng (``m1``..``m7``, ``f1``..``f5``, ``klatt``, ...).

    Combine one with a language as ``"en+<variant>"``.
    """
    loader: Any = require("espeakng_loader", plugin="audio", extra="audio")
    folder = Path(loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file())
