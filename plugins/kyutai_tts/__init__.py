"""Kyutai streaming TTS for LiveKit Agents, and the batched engine server it talks to.

`from kyutai_tts import TTS` gives the LiveKit plugin (a thin WebSocket client). The engine
server (`python -m kyutai_tts.server`) lives beside it and shares only `protocol.py`; importing
the plugin never imports torch or moshi, and the server never imports LiveKit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tts import TTS, ChunkedStream, SynthesizeStream

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import tts

        return getattr(tts, name)
    raise AttributeError(f"module 'kyutai_tts' has no attribute {name!r}")
