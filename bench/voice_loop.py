"""The voice loop end to end: N simulated kiosks talking French to ONE agent worker at once.

``python -m bench.voice_loop [--quick] [--sessions 1,20] [--turns N] [--soak MINUTES]``

What runs: the local stack (PostgreSQL, Redis, LiveKit on loopback), the token service, one
Kyutai STT and one Kyutai TTS engine server on tiny random-weight checkpoints (capacity: the
largest level plus a few), the offline LLM stand-in and one ``python -m agent start`` worker.
Each kiosk is this process's :class:`jarvis_local.kiosk_sim.SimulatedKiosk`: it badges in through the
token service, joins its room, waits for JARVIS's greeting to end, then speaks ``--turns``
espeak-ng French sentences, each once the agent has been quiet for a second (the agent's
answer, or anything else it said, is over).

Per level (one row per number of concurrent sessions; ``--quick``: 1 and 4, see below):

- ``v2v_ms_p50`` / ``v2v_ms_p95``: voice to voice as the kiosk hears it, from the last voiced
  sample it sent to the first agent audio sample it received (``Turn.v2v_ms``), over the turns
  the kiosk began while the agent was silent. A turn spoken over agent speech
  (``overlapped_turns``) is left out: its "first agent sample" belongs to an answer already
  under way.
- ``lost_turns``: turns with no agent audio within ``--answer-timeout`` seconds, plus every
  turn of a session that never got JARVIS into its room (``failed_sessions``).
- ``member_final_ms_p50``: from the last voiced sample to the kiosk receiving the agent's final
  transcript of the member's words: audio transport in, the STT, and the endpointing (the
  Kyutai STT's pause prediction and flush, inside the engine), plus a few ms of text transport.
- ``overhead_ms_p50``: voice to voice minus the endpointing minus model compute, per turn then
  the median: ``median(v2v - member_final) - (llm + tts)``, ``after_final_ms_p50`` being that
  median before the subtraction. ``llm`` (LLM time to first token) and ``tts`` (TTS time to
  first audio) are what the agent reports: the medians of the worker's
  ``jarvis_voice_latency_seconds`` histogram (Prometheus, ``stage`` label) over the level's
  talking time, interpolated inside its buckets as Prometheus' ``histogram_quantile`` does
  (``stages_source`` ``prometheus``: coarse, buckets at 25, 50, 100, 150, 200, 300 ms …); else
  the median over the level's sessions of their ``voice_sessions.latency_summary`` medians
  (``voice_sessions``, which also count each greeting). What is left: the agent's turn
  handling after the final, sentence chunking, audio out through the SFU to the kiosk,
  jitter buffers, Opus. Why not the agent's own ``end_of_turn``: with the Kyutai STT's turn
  detection it reads ~0 (the agent counts from the STT's end-of-speech event, which comes with
  the final), so the endpointing is only visible from the kiosk. Preemptive generation may
  start the LLM before the final, which makes the figure smaller (even negative). ``null``
  when the agent reported no stage (see ``notes``).
- ``cpu_pct_per_session``: CPU of the worker's process tree (the worker and the job processes
  that existed when the level began: the ones hosting its sessions) over the talking time,
  divided by the sessions (100 = one core). The engines are shared: ``engines_cpu_pct`` is their
  total. Job processes the pool starts to refill its idle ones are left out, and the turns only
  begin once that refill is over (``settle_s``), so it does not distort the figures.
- ``rss_mb_per_session``: RSS of the worker's main process plus the job processes that hosted
  a session (those that used CPU during the level: ``job_processes``), divided by the sessions.
  RSS counts pages shared between forked processes once per process: an upper bound.
- What the tiny STT does with silence, reported rather than hidden: ``junk_transcripts`` (final
  transcripts of the member's track while the kiosk was silent: random weights emit words on
  silence), ``unprompted_speech`` (the agent starting to talk after >= 1.5 s of silence while no
  sentence of the kiosk was waiting for an answer: an answer to junk words, or an answer so late
  that the kiosk gave up on it).

``--quick`` keeps 1 and 4 sessions, not 20: on the 2-core development machine (shared) the
loop is CPU-bound well before 20 (at 8, the engines and the job processes' silero VAD run
slower than real time and turns are lost), and the 20-session level did not finish in 20 min.

``--soak MINUTES`` (not in CI): ``--soak-sessions`` kiosks (20) visit again and again (join,
``--turns`` turns, leave) until the time is up; one row with the same keys plus the memory
growth of the worker's main process, of its whole tree and of the engines, from the first
sample after a minute to the last (``timeline``: a sample every 15 s). There, as job processes
come and go, ``cpu_pct_per_session`` is the whole tree's CPU (exited processes included) and
``rss_mb_per_session`` the whole tree's RSS at the end (idle processes included), per kiosk.

The bench never fails on timing: it exits non-zero only when the stack could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import httpx
import numpy as np
import psutil
from livekit import rtc
from prometheus_client.parser import text_string_to_metric_families

from bench.common import REPO, emit, percentile, progress
from bench.token_service import make_bench_gym
from jarvis.migrate import migrate
from jarvis_local.demo import llm_environment
from jarvis_local.kiosk_sim import (
    FRAME_MS,
    SPEECH_RMS,
    SessionRefused,
    SimulatedKiosk,
    open_session,
    poll,
    synthesize_french,
)
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack, StackError, free_port, local_stack

SENTENCES = (
    "Bonjour, comment on fait un squat ?",
    "Quels sont les horaires de la salle ce week-end ?",
    "Je voudrais réserver une séance avec un coach.",
    "Combien de séries je dois faire pour les pectoraux ?",
    "Est-ce que le cours de yoga a lieu ce soir ?",
)
# The model compute the agent reports: LLM time to first token, TTS time to first audio.
MODEL_STAGES = ("llm", "tts")
# The agent is done talking once it has been silent this long.
QUIET_S = 1.0
# Agent speech after this much silence, with no sentence waiting for an answer, is unprompted.
ONSET_GAP_S = 1.5
# What an idle job process may use (percent of a core) while the worker counts as quiet.
IDLE_PROCESS_CPU_PCT = 1.5
TINY_MODELS_DIR = REPO / ".data" / "bench-tiny-speech"


# -- the kiosk ----------------------------------------------------------------------------------
class BenchKiosk(SimulatedKiosk):
    """A simulated kiosk that also notes when the agent's final transcripts of its own words arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.member_finals: list[float] = []

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        # The agent publishes the member's transcript under the member's (the kiosk's) identity.
        if identity != self.room.local_participant.identity:
            super()._on_transcription(reader, identity)
            return

        async def read() -> None:
            text = await reader.read_all()
            if (reader.info.attributes or {}).get("lk.transcription_final") == "true" and text.strip():
                self.member_finals.append(time.perf_counter())

        self._tasks.append(asyncio.create_task(read()))

    def speech_onset_after(self, t: float, start_index: int = 0) -> tuple[float | None, int]:
        """First agent speech after ``t``, scanning from ``start_index``; returns (when, where to resume)."""
        frames = self.heard.frames
        i = max(start_index, bisect.bisect_right(frames, t, key=lambda f: f[0]))
        while i < len(frames):
            at, level = frames[i]
            if level >= SPEECH_RMS:
                return at - FRAME_MS / 1000, i
            i += 1
        return None, i

    def quiet_for(self, seconds: float) -> bool:
        """No agent speech in the last ``seconds`` (only the newest frames are looked at)."""
        since = time.perf_counter() - seconds
        for at, level in reversed(self.heard.frames):
            if at < since:
                break
            if level >= SPEECH_RMS:
                return False
        return True

    def speech_onsets(self, gap_s: float) -> list[float]:
        """Times the agent started talking after at least ``gap_s`` of silence."""
        onsets: list[float] = []
        last: float | None = None
        for at, level in self.heard.frames:
            if level < SPEECH_RMS:
                continue
            if last is None or at - last >= gap_s:
                onsets.append(at - FRAME_MS / 1000)
            last = at
        return onsets


@dataclass
class TurnResult:
    v2v_ms: float | None
    member_final_ms: float | None
    overlapped: bool


@dataclass
class Visit:
    """One kiosk session: badge in, join, hear the greeting, talk, leave."""

    index: int
    token_url: str
    gym_key: str
    badge: str
    answer_timeout_s: float
    join_timeout_s: float
    kiosk: BenchKiosk = field(default_factory=BenchKiosk)
    session_id: str | None = None
    ready: bool = False
    error: str | None = None
    greeted: bool = False
    turns: list[TurnResult] = field(default_factory=list)
    # (sentence start, answer heard or given up) per turn: member finals and agent onsets in
    # these windows belong to the conversation, outside them they are the STT hearing silence.
    windows: list[tuple[float, float]] = field(default_factory=list)
    talk_began: float | None = None

    async def open(self) -> None:
        try:
            try:
                session = await open_session(self.token_url, self.gym_key, self.badge, f"bench-{self.index}")
            except SessionRefused as exc:
                self.error = f"token service answered {exc.status}"
                return
            self.session_id = session["session_id"]
            await self.kiosk.join(session["livekit_url"], session["token"])
            if await poll(self.kiosk.agent, self.join_timeout_s, every_s=0.1) is None:
                self.error = f"JARVIS not in the room within {self.join_timeout_s:.0f} s"
                return
            self.ready = True
            began = time.perf_counter()
            onset = await poll(lambda: self.kiosk.speech_onset_after(began - 5)[0], 20.0)
            self.greeted = onset is not None
            await poll(lambda: self.kiosk.quiet_for(QUIET_S), 20.0)
        except (httpx.HTTPError, rtc.ConnectError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def talk(self, sentences: list[tuple[str, np.ndarray]], turns: int) -> None:
        if not self.ready:
            return
        self.talk_began = time.perf_counter()
        for n in range(turns):
            # Anything the agent is still saying (a long answer, an answer to junk) ends first.
            await poll(lambda: self.kiosk.quiet_for(QUIET_S), 20.0)
            text, pcm = sentences[(self.index + n) % len(sentences)]
            started = time.perf_counter()
            turn = await self.kiosk.say(pcm, text)
            overlapped = self.kiosk.speech_onset_after(started)[0] is not None
            resume = 0

            def answered(voice_end: float = turn.voice_end) -> float | None:
                nonlocal resume
                onset, resume = self.kiosk.speech_onset_after(voice_end, resume)
                return onset

            first = await poll(answered, self.answer_timeout_s)
            turn.first_answer = first
            finals = [t for t in self.kiosk.member_finals if t > turn.voice_end]
            member_final = 1000 * (finals[0] - turn.voice_end) if finals else None
            self.turns.append(TurnResult(turn.v2v_ms, member_final, overlapped))
            self.windows.append((started, (first or time.perf_counter()) + 2.0))
            # A member pauses a moment before speaking again.
            await asyncio.sleep(random.uniform(0.3, 0.8))
        await poll(lambda: self.kiosk.quiet_for(QUIET_S), 20.0)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.kiosk.leave()

    def in_window(self, t: float) -> bool:
        return any(start <= t <= end for start, end in self.windows)

    def junk_transcripts(self) -> int:
        if self.talk_began is None:
            return 0
        return sum(1 for t in self.kiosk.member_finals if t >= self.talk_began and not self.in_window(t))

    def unprompted_speech(self) -> int:
        if self.talk_began is None:
            return 0
        return sum(
            1 for onset in self.kiosk.speech_onsets(ONSET_GAP_S)
            if onset >= self.talk_began and not self.in_window(onset)
        )


# -- the worker's processes ---------------------------------------------------------------------
@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    rss_mb: float
    created: float
    # CPU of its children that have exited (and were reaped): job processes come and go.
    reaped_cpu_s: float = 0.0


def sample_tree(root_pid: int) -> dict[int, ProcSample]:
    """CPU seconds and RSS of a process and all its descendants."""
    samples: dict[int, ProcSample] = {}
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return samples
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                samples[p.pid] = ProcSample(t.user + t.system, p.memory_info().rss / 2**20, p.create_time(),
                                            t.children_user + t.children_system)
        except psutil.Error:
            continue
    return samples


def tree_cpu_s(tree: dict[int, ProcSample]) -> float:
    """All the CPU the tree has used, its exited processes included."""
    return sum(s.cpu_s + s.reaped_cpu_s for s in tree.values())


def cpu_between(before: dict[int, ProcSample], after: dict[int, ProcSample], pids: set[int]) -> float:
    return sum(after[p].cpu_s - before[p].cpu_s for p in pids if p in before and p in after)


async def wait_until_quiet(pid: int, *, what: str, timeout_s: float, max_cpu_pct: float,
                           exclude: set[int] | None = None, only_new_since: float | None = None,
                           min_processes: int = 0) -> float:
    """Wait until the tree under ``pid`` (or its processes started after ``only_new_since``) is idle.

    Returns the seconds waited. Never fails: on a busy shared machine it just gives up waiting.
    """
    began = time.perf_counter()
    calm = 0
    previous = await asyncio.to_thread(sample_tree, pid)
    while time.perf_counter() - began < timeout_s:
        await asyncio.sleep(2.0)
        current = await asyncio.to_thread(sample_tree, pid)
        pids = {p for p in current if p not in (exclude or set())}
        if only_new_since is not None:
            pids = {p for p in pids if current[p].created > only_new_since}
        used = cpu_between(previous, current, pids) + sum(current[p].cpu_s for p in pids if p not in previous)
        previous = current
        # An idle job process still answers the worker's pings: allow it a little.
        quiet = 100 * used / 2.0 < max_cpu_pct + IDLE_PROCESS_CPU_PCT * len(pids)
        calm = calm + 1 if quiet and len(current) >= min_processes else 0
        if calm >= 2:
            return time.perf_counter() - began
    progress(f"  {what}: still busy after {timeout_s:.0f} s, going on")
    return time.perf_counter() - began


# -- the agent's stage histogram ------------------------------------------------------------------
Histogram = dict[str, dict[float, float]]  # stage -> upper bound -> cumulative count


async def scrape_stages(http: aiohttp.ClientSession, url: str | None) -> Histogram:
    if url is None:
        return {}
    try:
        async with http.get(url) as r:
            text = await r.text()
    except (TimeoutError, aiohttp.ClientError):
        return {}
    stages: Histogram = {}
    for family in text_string_to_metric_families(text):
        if family.name != "jarvis_voice_latency_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                bound = float(s.labels["le"])
                stage = stages.setdefault(s.labels["stage"], {})
                stage[bound] = stage.get(bound, 0.0) + s.value
    return stages


def histogram_delta(after: Histogram, before: Histogram) -> Histogram:
    return {
        stage: {le: n - before.get(stage, {}).get(le, 0.0) for le, n in buckets.items()}
        for stage, buckets in after.items()
    }


def histogram_add(a: Histogram, b: Histogram) -> Histogram:
    out = {stage: dict(buckets) for stage, buckets in a.items()}
    for stage, buckets in b.items():
        for le, n in buckets.items():
            out.setdefault(stage, {})[le] = out.get(stage, {}).get(le, 0.0) + n
    return out


def histogram_median_ms(buckets: dict[float, float]) -> float | None:
    """The median from cumulative buckets, linearly interpolated inside its bucket."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), buckets[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return None
    rank, lower, below = total / 2, 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if le == float("inf"):
                return round(1000 * lower, 1)  # beyond the last bound: all we know is "at least"
            inside = buckets[le] - below
            return round(1000 * (lower + (le - lower) * ((rank - below) / inside if inside else 1.0)), 1)
        lower, below = le, buckets[le]
    return None


def stage_medians(hist: Histogram) -> dict[str, float]:
    medians = {stage: histogram_median_ms(buckets) for stage, buckets in sorted(hist.items())}
    return {stage: ms for stage, ms in medians.items() if ms is not None}


async def session_medians(dsn: str, session_ids: list[str], timeout_s: float = 30.0) -> dict[str, float]:
    """Median over sessions of each stage's per-session median (voice_sessions.latency_summary).

    The agent writes the summary when the session ends, so this waits for the sessions to close.
    """
    if not session_ids:
        return {}
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout_s
        while True:
            rows = await conn.fetch(
                "SELECT latency_summary FROM voice_sessions WHERE id = ANY($1::uuid[]) AND latency_summary IS NOT NULL",
                session_ids,
            )
            if len(rows) >= len(session_ids) or time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    per_stage: dict[str, list[float]] = {}
    for row in rows:
        summary = row["latency_summary"]
        summary = json.loads(summary) if isinstance(summary, str) else summary
        for key, ms in (summary or {}).items():
            per_stage.setdefault(key.removesuffix("_ms_p50"), []).append(float(ms))
    return {stage: round(statistics.median(values), 1) for stage, values in sorted(per_stage.items())}


def turn_figures(results: list[TurnResult], medians: dict[str, float]) -> dict[str, Any]:
    """Voice to voice and the overhead over the turns that started with the agent silent."""
    clean = [t for t in results if not t.overlapped]
    v2v = [t.v2v_ms for t in clean if t.v2v_ms is not None]
    finals = [t.member_final_ms for t in clean if t.member_final_ms is not None]
    after_final = [t.v2v_ms - t.member_final_ms for t in clean
                   if t.v2v_ms is not None and t.member_final_ms is not None]
    overhead = None
    if after_final and all(s in medians for s in MODEL_STAGES):
        overhead = round(percentile(after_final, 50) - sum(medians[s] for s in MODEL_STAGES), 1)
    return {
        "v2v_ms_p50": round(percentile(v2v, 50), 1),
        "v2v_ms_p95": round(percentile(v2v, 95), 1),
        "overhead_ms_p50": overhead,
        "member_final_ms_p50": round(percentile(finals, 50), 1),
        "after_final_ms_p50": round(percentile(after_final, 50), 1),
        "overlapped_turns": len(results) - len(clean),
    }


# -- the bench ----------------------------------------------------------------------------------
@dataclass
class Bench:
    stack: LocalStack
    token_url: str
    gym_key: str
    badges: list[str]
    worker_pid: int
    engine_pids: list[int]
    metrics_url: str | None
    sentences: list[tuple[str, np.ndarray]]
    answer_timeout_s: float
    join_timeout_s: float
    stage_total: Histogram = field(default_factory=dict)
    session_ids: list[str] = field(default_factory=list)
    next_badge: int = 0

    def visits(self, n: int) -> list[Visit]:
        out = []
        for i in range(n):
            badge = self.badges[self.next_badge % len(self.badges)]
            self.next_badge += 1
            out.append(Visit(i, self.token_url, self.gym_key, badge, self.answer_timeout_s, self.join_timeout_s))
        return out

    def engines(self) -> dict[int, ProcSample]:
        samples: dict[int, ProcSample] = {}
        for pid in self.engine_pids:
            samples.update(sample_tree(pid))
        return samples

    async def stage_figures(self, visits: list[Visit], stages: Histogram) -> tuple[dict[str, float], str]:
        """The histogram's medians over the talking time, else the sessions' own medians.

        The histogram is coarse but covers exactly the turns measured; a session's summary also
        holds its greeting (a TTS start while every kiosk of the level joins at once).
        """
        ids = [v.session_id for v in visits if v.session_id]
        self.session_ids.extend(ids)
        medians = stage_medians(stages)
        if all(s in medians for s in MODEL_STAGES):
            return medians, "prometheus"
        return await session_medians(self.stack.pg_dsn, ids), "voice_sessions"

    async def snapshot(self) -> tuple[float, dict[int, ProcSample], dict[int, ProcSample]]:
        """Now, the worker's process tree and the engines' processes."""
        tree = await asyncio.to_thread(sample_tree, self.worker_pid)
        return time.perf_counter(), tree, await asyncio.to_thread(self.engines)

    async def level(self, http: aiohttp.ClientSession, sessions: int, turns: int) -> dict[str, Any]:
        progress(f"level: {sessions} concurrent session(s), {turns} turn(s) each")
        level_began = time.time()
        before_level = await asyncio.to_thread(sample_tree, self.worker_pid)
        visits = self.visits(sessions)
        await asyncio.gather(*(v.open() for v in visits))
        for v in visits:
            if v.error:
                progress(f"  kiosk {v.index}: {v.error}")
        ready = [v for v in visits if v.ready]
        progress(f"  {len(ready)}/{sessions} sessions ready, {sum(v.greeted for v in ready)} greeted")
        # The pool starts new idle processes for the ones the sessions took: let that finish first.
        settle_s = await wait_until_quiet(self.worker_pid, what="idle-process refill", timeout_s=60,
                                          max_cpu_pct=10, only_new_since=level_began)
        stages_before = await scrape_stages(http, self.metrics_url)
        t0, tree0, eng0 = await self.snapshot()
        await asyncio.gather(*(v.talk(self.sentences, turns) for v in visits))
        t1, tree1, eng1 = await self.snapshot()
        stages = histogram_delta(await scrape_stages(http, self.metrics_url), stages_before)
        self.stage_total = histogram_add(self.stage_total, stages)
        await asyncio.gather(*(v.close() for v in visits))
        medians, source = await self.stage_figures([v for v in visits if v.ready], stages)

        row = self.row(sessions, turns, visits, medians, t1 - t0, before_level, tree0, tree1, eng0, eng1)
        row["stages_source"] = source
        row["settle_s"] = round(settle_s, 1)
        progress(f"  v2v p50 {row['v2v_ms_p50']} ms, p95 {row['v2v_ms_p95']} ms, lost {row['lost_turns']}"
                 f"/{row['turns']}, junk transcripts {row['junk_transcripts']}")
        # Sessions end, job processes exit and the pool refills: wait before the next level.
        await wait_until_quiet(self.worker_pid, what="worker after the level", timeout_s=60, max_cpu_pct=15)
        return row

    def row(self, sessions: int, turns: int, visits: list[Visit], medians: dict[str, float], seconds: float,
            before_level: dict[int, ProcSample], tree0: dict[int, ProcSample], tree1: dict[int, ProcSample],
            eng0: dict[int, ProcSample], eng1: dict[int, ProcSample]) -> dict[str, Any]:
        results = [t for v in visits for t in v.turns]
        failed = [v for v in visits if not v.ready]
        lost = sum(1 for t in results if t.v2v_ms is None) + turns * len(failed)
        # The processes hosting this level's sessions existed when it began; new ones are refills.
        hosts = {p for p in tree1 if p in before_level and p != self.worker_pid}
        busy = {p for p in hosts if p in tree0 and tree1[p].cpu_s - tree0[p].cpu_s > 0.05 * seconds}
        worker_cpu = cpu_between(tree0, tree1, hosts | {self.worker_pid})
        seconds = max(seconds, 1e-6)
        live = max(1, sessions - len(failed))
        return {
            "sessions": sessions,
            **turn_figures(results, medians),
            "turns": turns * sessions,
            "lost_turns": lost,
            "cpu_pct_per_session": round(100 * worker_cpu / seconds / live, 1),
            "rss_mb_per_session": round(
                (tree1.get(self.worker_pid, ProcSample(0, 0, 0)).rss_mb + sum(tree1[p].rss_mb for p in busy)) / live, 1
            ),
            "job_processes": len(busy),
            "failed_sessions": len(failed),
            "junk_transcripts": sum(v.junk_transcripts() for v in visits),
            "unprompted_speech": sum(v.unprompted_speech() for v in visits),
            "engines_cpu_pct": round(100 * cpu_between(eng0, eng1, set(eng1)) / seconds, 1),
            "engines_rss_mb": round(sum(s.rss_mb for s in eng1.values()), 1),
            "stages_ms_p50": medians,
            "talk_s": round(seconds, 1),
        }

    async def soak(self, http: aiohttp.ClientSession, sessions: int, turns: int, minutes: float) -> dict[str, Any]:
        progress(f"soak: {sessions} kiosks visiting again and again for {minutes:g} min")
        deadline = time.perf_counter() + 60 * minutes
        done: list[Visit] = []
        timeline: list[dict[str, float]] = []
        began = time.perf_counter()
        stages_before = await scrape_stages(http, self.metrics_url)
        _, tree0, eng0 = await self.snapshot()

        async def kiosk_loop(index: int) -> None:
            while time.perf_counter() < deadline:
                (visit,) = self.visits(1)
                visit.index = index
                await visit.open()
                await visit.talk(self.sentences, turns)
                await visit.close()
                done.append(visit)
                if not visit.ready:
                    await asyncio.sleep(5)  # do not hammer a worker that cannot take the session

        async def sampler() -> None:
            while time.perf_counter() < deadline:
                tree = await asyncio.to_thread(sample_tree, self.worker_pid)
                timeline.append({
                    "t_s": round(time.perf_counter() - began, 1),
                    "worker_rss_mb": round(tree.get(self.worker_pid, ProcSample(0, 0, 0)).rss_mb, 1),
                    "tree_rss_mb": round(sum(s.rss_mb for s in tree.values()), 1),
                    "engines_rss_mb": round(sum(s.rss_mb for s in (await asyncio.to_thread(self.engines)).values()), 1),
                    "lost_turns": sum(1 for v in done for t in v.turns if t.v2v_ms is None),
                })
                await asyncio.sleep(15)

        await asyncio.gather(sampler(), *(kiosk_loop(i) for i in range(sessions)))
        seconds = time.perf_counter() - began
        _, tree1, eng1 = await self.snapshot()
        stages = histogram_delta(await scrape_stages(http, self.metrics_url), stages_before)
        self.stage_total = histogram_add(self.stage_total, stages)
        results = [t for v in done for t in v.turns]
        medians, source = await self.stage_figures([v for v in done if v.ready], stages)
        # Memory growth from the first sample after a warm-up minute (every kiosk has come once).
        first = next((s for s in timeline if s["t_s"] >= 60), timeline[0])
        last = timeline[-1]
        return {
            "sessions": sessions,
            **turn_figures(results, medians),
            "turns": len(results) + turns * sum(1 for v in done if not v.ready),
            "lost_turns": sum(1 for t in results if t.v2v_ms is None) + turns * sum(1 for v in done if not v.ready),
            # Over the whole soak the job processes come and go: the tree as a whole, per kiosk.
            "cpu_pct_per_session": round(100 * (tree_cpu_s(tree1) - tree_cpu_s(tree0)) / seconds / sessions, 1),
            "rss_mb_per_session": round(sum(s.rss_mb for s in tree1.values()) / sessions, 1),
            "visits": len(done),
            "failed_sessions": sum(1 for v in done if not v.ready),
            "junk_transcripts": sum(v.junk_transcripts() for v in done),
            "unprompted_speech": sum(v.unprompted_speech() for v in done),
            "engines_cpu_pct": round(100 * cpu_between(eng0, eng1, set(eng1)) / seconds, 1),
            "stages_ms_p50": medians,
            "stages_source": source,
            "minutes": round(seconds / 60, 1),
            "worker_rss_growth_mb": round(last["worker_rss_mb"] - first["worker_rss_mb"], 1),
            "tree_rss_growth_mb": round(last["tree_rss_mb"] - first["tree_rss_mb"], 1),
            "engines_rss_growth_mb": round(last["engines_rss_mb"] - first["engines_rss_mb"], 1),
            "timeline": timeline,
        }


def pid_of(stack: LocalStack, name: str) -> int:
    for proc_name, proc in stack.processes:
        if proc_name == name:
            return proc.pid
    raise StackError(f"{name} is not running")


async def prepare(stack: LocalStack, max_sessions: int) -> tuple[str, list[str]]:
    await migrate(stack.pg_dsn, seed_demo=False)
    return await make_bench_gym(stack.pg_dsn, max(40, 4 * max_sessions))


async def measure(bench: Bench, levels: list[int], turns: int, soak: float | None,
                  soak_sessions: int) -> tuple[list[dict[str, Any]], dict[str, float], str]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        if soak is not None:
            results = [await bench.soak(http, soak_sessions, turns, soak)]
        else:
            results = [await bench.level(http, n, turns) for n in levels]
    # All levels together, from the same source as the rows.
    medians = stage_medians(bench.stage_total)
    if all(s in medians for s in MODEL_STAGES):
        return results, medians, "prometheus"
    return results, await session_medians(bench.stack.pg_dsn, bench.session_ids, timeout_s=5.0), "voice_sessions"


def run(args: argparse.Namespace) -> None:
    levels: list[int] = args.sessions
    largest = args.soak_sessions if args.soak is not None else max(levels)
    notes: list[str] = []
    progress("synthesizing the kiosk's French sentences with espeak-ng")
    sentences = [(text, synthesize_french(text)) for text in SENTENCES]
    with local_stack() as stack:
        key, badges = asyncio.run(prepare(stack, largest))
        progress("building/using tiny Kyutai checkpoints and starting the STT and TTS engines")
        models = tiny_models(TINY_MODELS_DIR)
        speech_env = stack.start_speech_engines(models, streams=largest + 4)
        url = stack.start_token_service({"JARVIS_LIVEKIT_API_SECRET": stack.livekit_api_secret})
        llm_env, llm_banner = llm_environment(stack)
        llm = "standin" if llm_env else "configured"
        metrics_port = free_port()
        prom_dir = stack.workdir / "prometheus"
        prom_dir.mkdir(exist_ok=True)
        progress(f"starting the agent worker with {largest + 1} idle job processes")
        stack.start_agent_worker({
            **llm_env, **speech_env,
            "JARVIS_SPEECH__MODE": "kyutai",
            # One job process per session: enough warm ones for the largest level, plus one.
            "JARVIS_NUM_IDLE_PROCESSES": str(largest + 1),
            "JARVIS_MAX_SESSIONS": str(largest + 5),
            "JARVIS_PROMETHEUS_PORT": str(metrics_port),
            # The job processes' samples reach the worker's endpoint only in multiprocess mode.
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "NO_TORCH_COMPILE": "1",
            "OMP_NUM_THREADS": "1",
        })
        worker = pid_of(stack, "agent")
        progress("waiting for the worker's idle processes to finish warming up")
        # The worker starts its idle processes over time: wait until they are all there and idle.
        warm_s = asyncio.run(wait_until_quiet(worker, what="worker warm-up", timeout_s=180, max_cpu_pct=15,
                                              min_processes=largest + 2))
        progress(f"  worker quiet after {warm_s:.0f} s")
        bench = Bench(
            stack=stack, token_url=url, gym_key=key, badges=badges, worker_pid=worker,
            engine_pids=[pid_of(stack, "kyutai-stt"), pid_of(stack, "kyutai-tts")],
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics", sentences=sentences,
            answer_timeout_s=args.answer_timeout, join_timeout_s=args.join_timeout,
        )
        results, stages, source = asyncio.run(
            measure(bench, levels, args.turns, args.soak, args.soak_sessions))
        if not stages:
            notes.append("no stage figures: neither voice_sessions.latency_summary nor the worker's"
                         " jarvis_voice_latency_seconds histogram had any, so overhead_ms_p50 is null")
        if any(r["junk_transcripts"] or r["unprompted_speech"] for r in results):
            notes.append("the tiny random-weight STT transcribes words on silence: junk_transcripts and"
                         " unprompted_speech count them; an overlapped turn began while the agent answered junk")
        if llm_env:
            notes.append(llm_banner)
    emit("voice_loop", weights=models.weights, quick=args.quick, results=results, stages_ms_p50=stages,
         stages_source=source,
         turns_per_session=args.turns, llm=llm, soak_minutes=args.soak, notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest and the largest level only")
    parser.add_argument("--sessions", type=lambda s: [int(n) for n in s.split(",")], default=None,
                        help="comma-separated levels (default 1,2,4,8,16,20; quick: 1,4)")
    parser.add_argument("--turns", type=int, default=None, help="sentences per session (default 4; quick: 2)")
    parser.add_argument("--answer-timeout", type=float, default=30.0,
                        help="seconds without agent audio after which a turn is lost")
    parser.add_argument("--join-timeout", type=float, default=120.0,
                        help="seconds for JARVIS to join a kiosk's room")
    parser.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                        help="soak instead of levels: --soak-sessions kiosks for MINUTES (not in CI)")
    parser.add_argument("--soak-sessions", type=int, default=20)
    args = parser.parse_args()
    if args.sessions is None:
        args.sessions = [1, 4] if args.quick else [1, 2, 4, 8, 16, 20]
    if args.turns is None:
        args.turns = 2 if args.quick else 4
    if min(args.sessions) < 1 or args.turns < 1 or args.soak_sessions < 1:
        parser.error("sessions and turns must be at least 1")
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    # A killed bench (CI timeout, Ctrl-C) still stops the stack it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("voice_loop: terminated"))
    try:
        run(args)
    except StackError as exc:
        raise SystemExit(f"voice_loop: {exc}") from exc


if __name__ == "__main__":
    main()
