"""Speech for a session: Kyutai STT and TTS (through the engine servers), turn taking, barge-in.

Everything here runs on our own machines. LiveKit Agents would otherwise pick its cloud turn
detector and adaptive interruption by default, so both are set explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit.agents import stt as lk_stt
from livekit.agents import tts as lk_tts
from livekit.agents.voice.turn import TurnHandlingOptions
from pydantic import BaseModel, Field

from agent.barge_in import BargeInSettings, ObservedVAD, VoicedRun

logger = logging.getLogger("jarvis.agent.voice")

TurnDetection = Literal["kyutai", "vad"]


class SpeechSettings(BaseModel):
    """Nested in AgentSettings as ``speech`` (``JARVIS_SPEECH__MODE=text`` etc.).

    The engines' addresses are the plugins' own settings: ``KYUTAI_STT_URL``, ``KYUTAI_TTS_URL``
    (and their ``_API_KEY``); per-gym voices are ``KYUTAI_TTS_GYM_VOICES``.
    """

    # "kyutai": the member speaks and hears JARVIS; "text": chat only (no engines needed).
    mode: Literal["kyutai", "text"] = "kyutai"
    # "kyutai": end of turn from the STT's end-of-speech head (flushes the STT at once);
    # "vad": silence after speech, from the local silero VAD.
    turn_detection: TurnDetection = "kyutai"
    # Extra wait after the end of turn is detected (the Kyutai head already waited for a pause).
    min_endpointing_delay_s: float = Field(default=0.05, ge=0.0, le=5.0)
    max_endpointing_delay_s: float = Field(default=2.5, ge=0.1, le=10.0)
    # The STT's end of turn waits while silero still hears the member's voice, at most this long
    # (a head that fired mid-word split the question in two; 0 = off). Its latest 32 ms window
    # decides, so a turn that ends in silence waits for nothing.
    end_of_turn_hold_s: float = Field(default=0.4, ge=0.0, le=2.0)
    # Barge-in: JARVIS pauses when the member talks over it, stops once it is clearly speech,
    # resumes after a cough or a clang (agent/barge_in.py).
    barge_in: BargeInSettings = Field(default_factory=BargeInSettings)
    # Start the LLM on the STT's interim words, before the turn is confirmed.
    preemptive_generation: bool = True
    # livekit-agents' "AEC warm-up": for this long after JARVIS first starts speaking (the greeting),
    # the STT gets silence instead of the member's microphone and nothing interrupts. The kiosk
    # captures with the browser's echo cancellation (kiosk MICROPHONE_CAPTURE), so there is no echo
    # to guard against, and LiveKit's 3 s default dropped a member who asked at once: a question
    # spoken over the greeting's first seconds was never transcribed nor answered. 0 = off; raise
    # it for a kiosk whose microphone has no echo cancellation.
    aec_warmup_s: float = Field(default=0.0, ge=0.0, le=10.0)
    # The member's audio reaches the VAD and the STT in frames this long. livekit-agents' 50 ms
    # default holds each sound up to 50 ms before silero sees it: the barge-in pause and stop, and
    # the STT's end of turn, all wait on it.
    input_frame_ms: int = Field(default=20, ge=10, le=100)
    # livekit-agents runs WebRTC's automatic gain control on every input frame unless told not to.
    # The kiosk's browser already levels its microphone (kiosk MICROPHONE_CAPTURE: autoGainControl),
    # so a second pass only costs a native call per frame (and lifts a quiet clang towards silero's
    # threshold). Turn it on for a kiosk whose capture has no gain control of its own.
    auto_gain_control: bool = False


@dataclass
class Speech:
    stt: lk_stt.STT | None
    tts: lk_tts.TTS | None
    vad: ObservedVAD | None
    turn_handling: TurnHandlingOptions
    aec_warmup_s: float = 0.0
    barge_in: BargeInSettings = field(default_factory=BargeInSettings)
    input_frame_ms: int = 20
    auto_gain_control: bool = False


def turn_handling(settings: SpeechSettings) -> TurnHandlingOptions:
    detection: Any = "stt" if settings.turn_detection == "kyutai" else "vad"
    if settings.mode == "text":
        detection = "manual"
    return TurnHandlingOptions(
        turn_detection=detection,
        endpointing={"min_delay": settings.min_endpointing_delay_s, "max_delay": settings.max_endpointing_delay_s},
        interruption={
            "enabled": True,
            "mode": "vad",
            "min_duration": settings.barge_in.pause_after_s,
            "resume_false_interruption": True,
            "false_interruption_timeout": settings.barge_in.resume_after_s,
        },
        preemptive_generation={"enabled": settings.preemptive_generation},
    )


def build_speech(settings: SpeechSettings, gym_id: str, gym_voice: str | None = None) -> Speech:
    """The session's speech plugins; in text mode none (the session reads and writes chat).

    The voice: the gym's own (``gyms.agent_settings.voice``) when set, else the plugin's
    per-gym setting (``KYUTAI_TTS_GYM_VOICES``), else the French default.
    """
    handling = turn_handling(settings)
    if settings.mode == "text":
        return Speech(stt=None, tts=None, vad=None, turn_handling=handling)

    # Imported here: a text-only worker never loads the speech plugins.
    import kyutai_stt
    import kyutai_tts
    from livekit.agents import inference

    # Silero (bundled with livekit-agents, runs locally) tells when the member talks over JARVIS.
    # Silero's own start of speech no later than the pause (its default waits 0.05 s).
    vad = ObservedVAD(inference.VAD(model="silero", min_speech_duration=min(0.05, settings.barge_in.pause_after_s)))
    voice = VoicedRun(settings.barge_in.confirm_min_probability)
    vad.add_listener(voice.update)
    stt = kyutai_stt.STT(
        language="fr",
        end_of_turn=kyutai_stt.EndOfTurnOptions(hold_while_voiced_s=settings.end_of_turn_hold_s),
        voice_heard=(lambda: voice.seconds > 0) if settings.end_of_turn_hold_s > 0 else None,
    )
    tts = kyutai_tts.TTS(voice=gym_voice) if gym_voice else kyutai_tts.TTS.for_gym(gym_id)
    logger.info("speech: kyutai stt+tts, turn detection %s", settings.turn_detection)
    return Speech(
        stt=stt, tts=tts, vad=vad, turn_handling=handling, aec_warmup_s=settings.aec_warmup_s,
        barge_in=settings.barge_in, input_frame_ms=settings.input_frame_ms,
        auto_gain_control=settings.auto_gain_control,
    )
