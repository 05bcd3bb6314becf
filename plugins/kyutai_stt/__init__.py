"""Kyutai streaming speech-to-text for LiveKit Agents: the plugin (`STT`) and, beside it, the batched
engine server it talks to (`python -m kyutai_stt.server`), sharing Kyutai's own protocol.

The engine modules import torch and moshi; the plugin does not, so agent jobs stay light.
"""


from .models import EndOfTurnOptions, SttLanguage
from .stt import STT, SpeechStream

__all__ = ["STT", "EndOfTurnOptions", "SpeechStream", "SttLanguage"]
