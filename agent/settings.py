from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from agent.llm import LLMConfig
from agent.voice import SpeechSettings
from jarvis.settings import StoreSettings


class SessionLogSettings(BaseModel):
    """The session log's outbox and the sweeper (``JARVIS_SESSION_LOG__*``).

    Every row of a session is appended to a file in ``spool_dir`` (fsync'd) before it is sent to
    PostgreSQL, and replayed from there after an outage or a crash: the folder must be on a local
    disk that outlives the worker process (systemd: ``StateDirectory``), shared by the workers of
    one host, never by two databases.
    """

    spool_dir: Path = Path(".data/session-log")
    # The outbox's bound, all sessions of the folder together: past it, new rows are dropped with
    # a warning (a database down for hours must not fill the disk). ~1 KB a row.
    spool_max_mb: float = Field(default=256.0, gt=0)
    # How long a session's end waits for its rows to reach the database before it leaves the
    # rest to the sweeper (the job process then exits).
    drain_timeout_s: float = Field(default=10.0, gt=0)
    # How often a live session says so (voice_sessions.heartbeat_at).
    heartbeat_s: float = Field(default=15.0, gt=0)
    # How often the worker's sweeper replays the outboxes of dead jobs and ends stale sessions.
    sweep_interval_s: float = Field(default=10.0, gt=0)
    # An open session whose heartbeat is older than this is ended as "interrompue".
    sweep_after_s: float = Field(default=90.0, gt=0)

    @model_validator(mode="after")
    def _sweep_after_several_heartbeats(self) -> SessionLogSettings:
        if self.sweep_after_s < 3 * self.heartbeat_s:
            raise ValueError("sweep_after_s must be at least 3 heartbeats: a live session would be swept")
        return self


class AgentSettings(StoreSettings):
    """The worker's settings, from the environment (``JARVIS_*``; the stores' from StoreSettings).

    LiveKit's own ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are read by
    livekit-agents itself.
    """

    model_config = SettingsConfigDict(env_prefix="JARVIS_", env_nested_delimiter="__", extra="ignore")

    agent_name: str = "jarvis"
    # Idle job processes kept warm; each costs a Python process (~150 MB).
    num_idle_processes: int = 2
    # Where each session runs: "process" (livekit-agents' default: a job process per session, so a
    # crash ends only that kiosk's session) or "thread" (every session in the worker's own process:
    # no Python, torch and livekit per session: 13 MB of memory per kiosk instead of 408 MB, the same
    # CPU, but every session's audio shares one interpreter, so latency suffers first under CPU load,
    # and one crashing session takes the worker's others with it). Measured in docs/ops.md (Sizing).
    job_executor: Literal["process", "thread"] = "process"
    # How long a new job process may take to start (imports, the silero VAD) before LiveKit kills it.
    # Its 10 s default killed every attempt on a busy 2-core host (the process started in 10-12 s):
    # after three, the job was refused and the kiosk got no JARVIS. A slow start costs one kiosk a
    # few seconds; a killed one costs it the session.
    process_init_timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)
    # How long a session waits for its kiosk to come back after the kiosk's link dropped (not a
    # deliberate leave) before it ends and the room closes. The kiosk's own rejoin tries for 7.5 s.
    kiosk_rejoin_grace_s: float = Field(default=15.0, ge=0.0, le=300.0)
    # A worker's load is its sessions / max_sessions (the models run in the engines, so a session
    # costs the worker little CPU; a session whose job is starting counts); at load_threshold it
    # passes each new job on and LiveKit offers it to another worker (agent/worker_load.py).
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
    # The durable session log and its sweeper: JARVIS_SESSION_LOG__SPOOL_DIR, …__SPOOL_MAX_MB,
    # …__HEARTBEAT_S, …__SWEEP_INTERVAL_S, …__SWEEP_AFTER_S.
    session_log: SessionLogSettings = Field(default_factory=SessionLogSettings)
