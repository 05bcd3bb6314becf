"""Barge-in: how soon JARVIS pauses when the member talks over it, how soon it stops for good, and
how often gym noise with no speech in it pauses or stops it.

The whole stack runs on loopback (LiveKit, the Kyutai engines on tiny weights, the LLM stand-in
that answers every question with the same long answer, one worker) and one simulated kiosk. Each
trial asks a question, waits until JARVIS is well into its answer, then plays a stimulus into the
kiosk's microphone:

- ``speech``: a French sentence from espeak-ng ("Attends, …"). ``duck_ms`` is from the member's
  first voiced sample to the kiosk ducking JARVIS's voice on its own microphone (the browser
  kiosk's rule, kiosk/src/duck.ts, which the simulated kiosk mirrors); ``pause_ms`` to JARVIS's
  last voiced frame heard at the kiosk before the agent paused it;
  ``stop_ms`` to the agent's ``confirmed`` (or ``stopped``) step on the ``jarvis.barge_in`` data
  topic (one host, one clock). A trial where JARVIS never paused, or resumed, is ``missed``.
- ``noise``: gym noises made with sox (a noise burst, a clap, a dropped weight's thud, music, a
  cough) at several peak levels. The kiosk ducks on any sound (nothing is lost:
  the answer plays on under it); ``false_duck_rate`` counts them and ``unducked`` those that came
  back. A ``paused`` step is a false pause; a pause that ends in ``confirmed`` or ``stopped``
  instead of ``resumed`` is a false stop. ``words_lost`` estimates the answer's words never heard
  after a resume, from the voiced seconds heard against answers heard out (``baseline`` trials) at
  the answer's own words per second.
- ``backchannel``: what a member says while listening ("Mmh.", "Hum.", "Euh.", "Ouais.", from
  espeak-ng, and a closed-mouth hum made with sox at each level). Ideally JARVIS goes on;
  ``stop_rate`` and ``stop_rate_by_voice`` say how often it stopped.

The kiosk's microphone carries only the stimulus: a kiosk cancels JARVIS's voice with the
browser's echo cancellation, so "noise under JARVIS's voice" reaches the agent as the noise alone.
Silero (the pause and the confirmation) is the real model; the tiny random-weight STT is not, and
it may transcribe a noise as words, which livekit-agents takes as the member's turn (a false stop
that real weights would not make): ``notes`` says so when it happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from agent.metrics import BARGE_IN_TOPIC
from agent.settings import AgentSettings
from bench.common import REPO, emit, percentile, progress
from jarvis.migrate import migrate
from jarvis_local.kiosk_sim import SAMPLE_RATE, SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack, StackError, local_stack

TINY_MODELS_DIR = REPO / ".data" / "bench-tiny-speech"
AGENT = "jarvis-barge-in-bench"
GYM_KEY, BADGE = "demo-key-lyon-part-dieu", "LYON-0001"
QUESTION = "Je voudrais voir la vidéo pour le squat."
ANSWER = (
    "Pour bien t'échauffer avant la séance, commence par cinq minutes de rameur à allure douce, "
    "puis fais des rotations des épaules, des hanches et des chevilles, et termine par deux séries "
    "légères de l'exercice que tu vas travailler aujourd'hui."
)
SPEECH = [
    "Attends, attends, j'ai une autre question.",
    "Non, excuse-moi, je voulais parler des abdos.",
    "Stop, tu peux répéter plus lentement ?",
    "Attends, c'est à quelle heure le cours de ce soir ?",
]
# sox `synth` effects, 48 kHz mono; each is normalised to the trial's peak level.
NOISES: dict[str, list[str]] = {
    "burst": ["synth", "0.15", "whitenoise", "fade", "0.005", "0.15", "0.06"],
    "clap": ["synth", "0.05", "pinknoise", "fade", "0", "0.05", "0.045"],
    "thud": ["synth", "0.35", "brownnoise", "lowpass", "150", "fade", "0", "0.35", "0.3"],
    "music": ["synth", "2.0", "pluck", "C3", "pluck", "E3", "pluck", "G3", "remix", "-", "tremolo", "4", "60"],
    # A cough's band-limited burst: silero never hears it as voice (max probability 0.17 offline).
    "cough": ["synth", "0.3", "pinknoise", "band", "1200", "1500", "fade", "0.005", "0.3", "0.25"],
}
# What a member says while listening, from espeak-ng: short, but speech to silero (voiced runs of
# 0.2-0.6 s offline), so a confirmation by duration alone stops JARVIS on most of them.
BACKCHANNELS = ["Mmh.", "Hum.", "Euh.", "Ouais."]
# ...and a closed-mouth hum made with sox, at each noise level: voiced, silero hears voice in it.
HUM = ["synth", "0.35", "sawtooth", "130-110", "lowpass", "400", "lowpass", "400", "fade", "0.03", "0.35", "0.1"]
LEVELS_DB = [-20.0, -6.0]
# JARVIS is "quiet" at the kiosk after this long without a voiced frame (the tiny TTS's own gaps
# between words are shorter).
QUIET_S = 0.2
# JARVIS going quiet later than this after the stimulus is the answer's own end, not a pause.
PAUSE_WINDOW_S = 1.5
SETTLE_S = 2.5
TRIAL_TRIES = 3


def sox_noise(effects: list[str], level_db: float) -> np.ndarray:
    out = subprocess.run(
        ["sox", "-n", "-r", str(SAMPLE_RATE), "-b", "16", "-e", "signed", "-c", "1", "-t", "raw", "-",
         *effects, "norm", str(level_db)],
        capture_output=True, check=True,
    )
    return np.frombuffer(out.stdout, dtype=np.int16).copy()


def first_voiced(pcm: np.ndarray, level: int = 300) -> np.ndarray:
    voiced = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return pcm[voiced[0]:] if voiced.size else pcm


@dataclass
class Trial:
    case: str  # "speech", "noise", "backchannel" or "baseline"
    kind: str
    level_db: float | None
    pause_ms: float | None = None  # at the kiosk
    duck_ms: float | None = None  # the kiosk's own duck
    unducked: bool = False  # ...and JARVIS's voice came back to full volume after it
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, ms after the onset), agent side
    voiced_s: float = 0.0  # the answer's voiced seconds heard at the kiosk
    skipped: str | None = None

    def step_ms(self, *names: str) -> float | None:
        return next((ms for step, ms in self.steps if step in names and ms >= 0), None)

    @property
    def fate(self) -> str:
        """How the agent's barge-in ended for a stimulus that should not stop JARVIS (``by_kind``)."""
        if self.step_ms("confirmed") is not None:
            return "confirmed"
        if self.step_ms("stopped") is not None:
            return "stopped"
        if self.step_ms("paused") is None:
            return "ignored"
        return "resumed" if self.step_ms("resumed") is not None else "paused"


class BargeInBench:
    def __init__(self, kiosk: SimulatedKiosk) -> None:
        self.kiosk = kiosk
        self.question = synthesize_french(QUESTION)
        self.steps: list[tuple[str, float]] = []  # (step, wall clock)
        kiosk.room.on("data_received", self._on_data)

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == BARGE_IN_TOPIC:
            record = json.loads(packet.data)
            self.steps.append((record["step"], float(record["at"])))

    async def settle(self) -> None:
        """Until JARVIS has been quiet a while (a resumed answer, a reply to a transcribed noise)."""
        await poll(lambda: not self.kiosk.heard.speaking_at(time.perf_counter(), SETTLE_S) or None, 60,
                   what="JARVIS to go quiet")

    async def trial(self, trial: Trial, stimulus: np.ndarray | None) -> Trial:
        kiosk = self.kiosk
        await self.settle()
        asked = await kiosk.say(self.question, QUESTION)
        answer = await poll(lambda: kiosk.heard.first_speech_after(asked.voice_end), 30, what="JARVIS's answer")
        await asyncio.sleep(0.8)
        if not kiosk.heard.speaking_at(time.perf_counter(), 0.2):
            trial.skipped = "JARVIS was not speaking 0.8 s into its answer"
            return trial
        self.steps.clear()
        onset = time.perf_counter()
        if stimulus is not None:
            onset = await kiosk.start_saying(stimulus)
        onset_wall = time.time() - (time.perf_counter() - onset)
        await self.settle()
        stopped = kiosk.heard.stopped_after(onset, QUIET_S)
        if stopped is not None and stopped - onset <= PAUSE_WINDOW_S:
            trial.pause_ms = 1000 * (stopped - onset)
        trial.steps = [(step, 1000 * (at - onset_wall)) for step, at in self.steps]
        ducks = [(at, ducked) for at, ducked in kiosk.duck.changes if at >= onset]
        if ducks and ducks[0][1] and ducks[0][0] - onset <= PAUSE_WINDOW_S:
            trial.duck_ms = 1000 * (ducks[0][0] - onset)
            trial.unducked = not kiosk.duck.ducked
        end = kiosk.heard.stopped_after(answer, SETTLE_S) or time.perf_counter()
        trial.voiced_s = sum(0.01 for at, level in kiosk.heard.frames if answer <= at <= end and level >= 300)
        return trial


def summarise(trials: list[Trial]) -> tuple[list[dict[str, Any]], list[str]]:
    notes: list[str] = []
    speech = [t for t in trials if t.case == "speech" and not t.skipped]
    noise = [t for t in trials if t.case == "noise" and not t.skipped]
    baseline = [t.voiced_s for t in trials if t.case == "baseline" and not t.skipped and not t.steps]
    missed = [t for t in speech if t.step_ms("paused") is None or t.step_ms("resumed") is not None]
    heard = [t for t in speech if t not in missed]
    pauses = [t.pause_ms for t in heard if t.pause_ms is not None]
    ducks = [t.duck_ms for t in speech if t.duck_ms is not None]
    noise_ducks = [t for t in noise if t.duck_ms is not None]
    stops = [ms for t in heard if (ms := t.step_ms("confirmed", "stopped")) is not None]
    agent_pauses = [ms for t in heard if (ms := t.step_ms("paused")) is not None]
    false_pauses = [t for t in noise if t.step_ms("paused") is not None]
    false_stops = [t for t in noise if t.step_ms("confirmed", "stopped") is not None]
    by_voice = [t for t in noise if t.step_ms("confirmed") is not None]
    if len(false_stops) > len(by_voice):
        notes.append("a noise stopped JARVIS through a transcript (livekit-agents stops an answer on the member's"
                     " final words): the tiny random-weight STT transcribes noises as words, which real weights"
                     " would not; false_stop_rate_by_voice counts the stops silero's voice confirmation made")
    resumed = [t for t in false_pauses if t.step_ms("resumed") is not None]
    backchannels = [t for t in trials if t.case == "backchannel" and not t.skipped]
    backchannel_stops = [t for t in backchannels if t.step_ms("confirmed", "stopped") is not None]
    words_lost: float | None = None
    if resumed and baseline:
        words_per_s = len(ANSWER.split()) / float(np.median(baseline))
        lost_s = [max(0.0, float(np.median(baseline)) - t.voiced_s) for t in resumed]
        words_lost = round(sum(lost_s) * words_per_s, 1)
    rows: list[dict[str, Any]] = [
        {
            "case": "speech",
            "duck_ms_p50": round(percentile(ducks, 50), 1) if ducks else None,
            "duck_ms_p95": round(percentile(ducks, 95), 1) if ducks else None,
            "pause_ms_p50": round(percentile(pauses, 50), 1) if pauses else None,
            "pause_ms_p95": round(percentile(pauses, 95), 1) if pauses else None,
            "stop_ms_p50": round(percentile(stops, 50), 1) if stops else None,
            "stop_ms_p95": round(percentile(stops, 95), 1) if stops else None,
            "agent_pause_ms_p50": round(percentile(agent_pauses, 50), 1) if agent_pauses else None,
            "trials": len(speech),
            "missed": len(missed),
            "skipped": sum(1 for t in trials if t.case == "speech" and t.skipped),
        },
        {
            "case": "noise",
            "false_duck_rate": round(len(noise_ducks) / len(noise), 3) if noise else None,
            "unducked": sum(1 for t in noise_ducks if t.unducked),
            "false_pause_rate": round(len(false_pauses) / len(noise), 3) if noise else None,
            "false_stop_rate": round(len(false_stops) / len(noise), 3) if noise else None,
            "false_stop_rate_by_voice": round(len(by_voice) / len(noise), 3) if noise else None,
            "words_lost": words_lost,
            "resumed": len(resumed),
            "trials": len(noise),
            "skipped": sum(1 for t in trials if t.case == "noise" and t.skipped),
            "by_kind": {f"{t.kind}@{t.level_db:g}dB": t.fate for t in noise},
        },
        {
            "case": "backchannel",
            "pause_rate": round(sum(1 for t in backchannels if t.step_ms("paused") is not None) / len(backchannels), 3)
            if backchannels else None,
            "stop_rate": round(len(backchannel_stops) / len(backchannels), 3) if backchannels else None,
            "stop_rate_by_voice": round(sum(1 for t in backchannels if t.step_ms("confirmed") is not None)
                                        / len(backchannels), 3) if backchannels else None,
            "resumed": sum(1 for t in backchannels if t.step_ms("resumed") is not None),
            "trials": len(backchannels),
            "skipped": sum(1 for t in trials if t.case == "backchannel" and t.skipped),
            "by_kind": {t.kind: t.fate for t in backchannels},
        },
    ]
    return rows, notes


async def measure(stack: LocalStack, speech_env: dict[str, str], args: argparse.Namespace) -> list[Trial]:
    stimuli: list[tuple[Trial, np.ndarray | None]] = [
        (Trial("baseline", "none", None), None) for _ in range(args.baseline)
    ]
    for i in range(args.speech):
        text = SPEECH[i % len(SPEECH)]
        stimuli.append((Trial("speech", text, None), first_voiced(synthesize_french(text))))
    for i in range(args.backchannels):
        text = BACKCHANNELS[i % len(BACKCHANNELS)]
        stimuli.append((Trial("backchannel", text, None), first_voiced(synthesize_french(text))))
    if args.backchannels:
        for level in args.levels:
            stimuli.append((Trial("backchannel", f"hum@{level:g}dB", level), first_voiced(sox_noise(HUM, level), 30)))
    for level in args.levels:
        for kind, effects in NOISES.items():
            stimuli.append((Trial("noise", kind, level), first_voiced(sox_noise(effects, level), level=30)))
    async with LLMStandIn(lambda _request: Say(ANSWER)) as llm:
        env = {**speech_env, **llm.worker_env}
        token_url = await asyncio.to_thread(stack.start_jarvis, AGENT, env, "agent-barge-in")
        session = await open_session(token_url, GYM_KEY, BADGE)
        kiosk = SimulatedKiosk()
        await kiosk.join(session["livekit_url"], session["token"])
        try:
            await poll(kiosk.agent, 60, what="JARVIS to join")
            bench = BargeInBench(kiosk)
            trials = []
            for n, (trial, pcm) in enumerate(stimuli, 1):
                progress(f"trial {n}/{len(stimuli)}: {trial.case} {trial.kind} {trial.level_db or ''}")
                # A trial is skipped when JARVIS's voice had a gap at the stimulus's onset (a slow TTS
                # step on a loaded box): nothing was measured, so ask again, up to TRIAL_TRIES times.
                for _attempt in range(TRIAL_TRIES):
                    done = await bench.trial(replace(trial), pcm)
                    if not done.skipped:
                        break
                    progress(f"  skipped: {done.skipped}; asking again")
                trials.append(done)
                progress(f"  duck {done.duck_ms} ms, pause {done.pause_ms} ms, steps {done.steps},"
                         f" voiced {done.voiced_s:.2f} s"
                         + (f", skipped: {done.skipped}" if done.skipped else ""))
        finally:
            await kiosk.leave()
    return trials


def run(args: argparse.Namespace) -> None:
    settings = AgentSettings().speech.barge_in  # the worker's, JARVIS_SPEECH__BARGE_IN__* included
    with local_stack() as stack:
        asyncio.run(migrate(stack.pg_dsn, seed_demo=True))
        progress("building/using tiny Kyutai checkpoints and starting the STT and TTS engines")
        models = tiny_models(Path(TINY_MODELS_DIR))
        speech_env = stack.start_speech_engines(models, streams=2)
        trials = asyncio.run(measure(stack, speech_env, args))
    rows, notes = summarise(trials)
    emit("barge_in", weights=models.weights, quick=args.quick, results=rows,
         noise_kinds=list(NOISES), levels_db=args.levels, settings=settings.model_dump(), notes=notes,
         trials=[{"case": t.case, "kind": t.kind, "level_db": t.level_db, "duck_ms": t.duck_ms, "pause_ms": t.pause_ms,
                  "steps": t.steps, "voiced_s": round(t.voiced_s, 2), "skipped": t.skipped} for t in trials])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 sentences, every noise at one level, 1 baseline")
    parser.add_argument("--speech", type=int, default=None, help="speech trials (default 8; quick: 2)")
    parser.add_argument("--baseline", type=int, default=None, help="answers heard out (default 2; quick: 1)")
    parser.add_argument("--backchannels", type=int, default=None,
                        help="a member's 'mmh', 'hum', 'euh', 'ouais' over JARVIS (default 4; quick: 0)")
    parser.add_argument("--levels", type=lambda s: [float(x) for x in s.split(",")], default=None,
                        help="noise peak levels in dBFS (default -20,-6; quick: -6)")
    args = parser.parse_args()
    args.speech = args.speech if args.speech is not None else (2 if args.quick else 8)
    args.baseline = args.baseline if args.baseline is not None else (1 if args.quick else 2)
    args.backchannels = args.backchannels if args.backchannels is not None else (0 if args.quick else 4)
    args.levels = args.levels or ([-6.0] if args.quick else LEVELS_DB)
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("barge_in: terminated"))
    try:
        run(args)
    except StackError as exc:
        raise SystemExit(f"barge_in: {exc}") from exc


if __name__ == "__main__":
    main()
