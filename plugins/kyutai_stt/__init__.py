"""Kyutai streaming speech-to-text for LiveKit Agents: the plugin (`STT`) and, beside it, the batched
engine server it talks to (`python -m kyutai_stt.server`), sharing Kyutai's own protocol.

The plugin is imported lazily so that the engine server does not load LiveKit, and agent jobs
never load torch or moshi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import EndOfTurnOptions, SttLanguage
    from .stt import STT, SpeechStream

__all__ = ["STT", "EndOfTurnOptions", "SpeechStream", "SttLanguage"]


def __getattr__(name: str) -> Any:
    if name in ("STT", "SpeechStream"):
        from . import stt

        return getattr(stt, name)
    if name in ("EndOfTurnOptions", "SttLanguage"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'kyutai_stt' has no attribute {name!r}")
