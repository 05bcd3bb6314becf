from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agent.llm import LLMConfig
from agent.voice import SpeechSettings
from jarvis.settings import StoreSettings


class AgentSettings(StoreSettings):
    """The worker's settings, from the environment (``JARVIS_*``; the stores' from StoreSettings).

    LiveKit's own ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are read by
    livekit-agents itself.
    """

    model_config = SettingsConfigDict(env_prefix="JARVIS_", env_nested_delimiter="__", extra="ignore")

    agent_name: str = "jarvis"
    # Idle job processes kept warm; each costs a Python process (~150 MB).
    num_idle_processes: int = 2
    # A worker's load is its sessions / max_sessions (the models run in the engines, so a session
    # costs the worker little CPU); at load_threshold it takes no new session and LiveKit routes
    # the next kiosk to another worker.
    max_sessions: int = 25
    load_threshold: float = 1.0
    # The load also counts the engines (KYUTAI_STT_URL(S), KYUTAI_TTS_URL(S)): their /api/health
    # is polled this often, and when every replica of STT or of TTS is full, draining or down the
    # load is 1.0; else max(sessions / max_sessions, the fullest engine's fill). 0: sessions only.
    engine_poll_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # Prometheus metrics of the worker (0 = off).
    prometheus_port: int = 0
    # The conversation's LLM: JARVIS_LLM__PRIMARY__PROVIDER=groq|vllm, JARVIS_LLM__PRIMARY__MODEL,
    # JARVIS_LLM__PRIMARY__BASE_URL, JARVIS_LLM__PRIMARY__API_KEY, the same for SECONDARY (optional),
    # JARVIS_LLM__ATTEMPT_TIMEOUT_S.
    llm: LLMConfig = Field(default_factory=LLMConfig)
    # How the member and JARVIS talk: JARVIS_SPEECH__MODE=kyutai|text, JARVIS_SPEECH__TURN_DETECTION=kyutai|vad, …
    speech: SpeechSettings = Field(default_factory=SpeechSettings)
