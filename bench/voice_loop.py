"""The voice loop end to end: N simulated kiosks talking French to ONE agent worker at once.

``python -m bench.voice_loop [--quick] [--sessions 1,20] [--turns N] [--soak MINUTES]``

What runs: the local stack (PostgreSQL, Redis, LiveKit on loopback), the token service, one
Kyutai STT and one Kyutai TTS engine server on tiny random-weight checkpoints (capacity: the
largest level plus a few), the offline LLM stand-in and one ``python -m agent start`` worker.
The kiosks are the load generator, apart from the measuring process: ``bench.voice_kiosks``
runs them in processes of their own (``KIOSKS_PER_PROCESS`` each, spawned), so a turn is timed
on the kiosk process's clock when its audio is sent or received, never by this process's
event loop. Each kiosk badges in through the token service, joins its room, waits for JARVIS's
greeting to end, then speaks ``--turns`` espeak-ng French sentences, each once the agent has
been quiet for a second.

Turns are accounted for by ``bench.turns`` (the one definition every bench uses): ``turns``,
``answered``, ``late_turns`` (answered, v2v over 3 s), ``lost_turns`` (no answer before the
member's next utterance or within 10 s; every turn of a session that never got JARVIS into its
room, ``failed_sessions``, is lost too), ``junk_answers`` (agent speech answering no pending
utterance: the tiny random-weight STT transcribes words on silence and JARVIS answers them).

Per level (one row per number of concurrent sessions; ``--quick``: 1 and 4, see below):

- ``v2v_ms_p50`` / ``v2v_ms_p95``: over answered turns only, from the last voiced sample the
  kiosk sent to the first agent audio it heard after at least 0.25 s of agent silence (speech
  running on over the member's last word is the end of something said before). ``null`` when
  no turn was answered, never 0.
- ``overhead_ms_p50`` / ``_p95``: per answered turn, ``v2v - member_final - llm_ttft -
  tts_ttfa``, then its percentiles. ``member_final``: from the last voiced sample to the kiosk
  receiving the agent's final transcript of the member's words (audio in, the STT, the Kyutai
  endpointing, text back); ``llm_ttft`` and ``tts_ttfa``: the agent's own figures for THAT turn
  (its ``jarvis.turn_metrics`` record, matched to the utterance by when the answer's first frame
  went out, ``bench.turns.match_agent_turn``). What is left: the agent's turn handling after
  the final, sentence chunking, audio out through the SFU, jitter buffers, Opus. Preemptive
  generation may start the LLM before the final, which makes it smaller (even negative). No
  ``_ms`` figure comes from Prometheus histogram buckets.
- ``stages_ms_p50`` (each row, and all levels at the top): medians over the answered turns of
  ``end_of_turn``, ``stt_final``, ``llm_first_token``, ``tts_first_audio`` (the agent's per-turn
  record), ``member_final`` (the kiosk) and ``transport`` (the kiosk hearing the first audio
  minus the agent's first frame out; one host, one clock).
- CPU and memory: the worker's process tree (the worker and the job processes that existed
  when the level began: the ones hosting its sessions; the refills the pool starts are left
  out) over the talking time, 100 = one core: ``cpu_pct_total``; ``rss_mb_total``: RSS of the
  worker's main process plus the job processes that hosted a session (``job_processes``). An
  idle level (no session, ``idle``) is measured first; ``cpu_pct_fixed`` +
  ``cpu_pct_per_session_slope`` × N (and the same for ``rss_mb_``) is the least-squares line
  through the idle level and every level (top-level keys). Each row's ``cpu_pct_per_session`` and
  ``rss_mb_per_session`` are the MARGINAL cost of a session at that level, ``(total - fixed) / N``
  with the fitted fixed cost, not total / N (which falls with N by construction). RSS counts
  pages shared between forked processes once per process: an upper bound. ``uss_mb_total``,
  ``uss_mb_per_session`` (and ``uss_mb_fixed``, ``_slope``) count only the memory each process
  holds alone (USS): job processes are forked from livekit-agents' forkserver and share most of
  their RSS with it, so this is what one more session costs. The engines are
  shared: ``engines_cpu_pct`` and ``engines_rss_mb`` are their totals.
- Also ``overlapped_turns`` (agent speech heard while the member was still talking),
  ``junk_transcripts`` (final transcripts of the member's track while no sentence was waiting
  for its answer) and ``agent_turns`` (turn records received from the agent).

``--quick`` keeps 1 and 4 sessions, not 20: on the 2-core development machine (shared) the
loop is CPU-bound well before 20 (at 8, the engines and the job processes' silero VAD run
slower than real time and turns are lost), and the 20-session level did not finish in 20 min.

``--soak MINUTES`` (not in CI): ``--soak-sessions`` kiosks (20) visit again and again (join,
``--turns`` turns, leave) until the time is up; one row with the same turn keys plus the memory
growth of the worker's main process, of its whole tree and of the engines, from the first
sample after a minute to the last (``worker_rss_growth_pct`` too), and the growth of the open file
descriptors of the worker's main process and of its tree (``worker_fds_growth``, ``tree_fds_growth``;
``timeline``: a sample every 15 s), and the asyncio tasks of the worker's main loop (its own gauge
``jarvis_worker_event_loop_tasks``): ``worker_tasks_idle_before`` and ``_after``, with no session,
before the first visit and after the last, and ``worker_tasks_growth`` (a job's tasks end with its
process). There, as job processes
come and go, ``cpu_pct_per_session`` is the whole tree's CPU (exited processes included) and
``rss_mb_per_session`` the whole tree's RSS at the end (idle processes included), per kiosk,
and the top-level fit is ``null``.

The bench never fails on timing: it exits non-zero only when the stack could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from kyutai_common.protocol import API_KEY_HEADER, http_url

from bench.common import REPO, emit, progress, row_measured
from bench.profile import TreeProfile
from bench.token_service import make_bench_gym
from bench.turns import (
    LOST_AFTER_S,
    Utterance,
    match_agent_turn,
    next_starts,
    outcome,
    percentile,
    summarize_kiosks,
)
from bench.voice_kiosks import PAUSE_S, VisitSpec, kiosk_process
from jarvis.migrate import migrate
from jarvis_local.demo import llm_environment
from jarvis_local.kiosk_sim import synthesize_french
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack, StackError, free_port, local_stack

SENTENCES = (
    "Bonjour, comment on fait un squat ?",
    "Quels sont les horaires de la salle ce week-end ?",
    "Je voudrais réserver une séance avec un coach.",
    "Combien de séries je dois faire pour les pectoraux ?",
    "Est-ce que le cours de yoga a lieu ce soir ?",
)
# Each kiosk process runs this many kiosks at most (``--kiosks-per-process``): few enough that its
# own loop stays prompt, few processes enough that 20 kiosks fit beside the stack on 2 cores.
KIOSKS_PER_PROCESS = 2
# The STT engine's histogram of how long each end-of-turn Marker waited (plugins/kyutai_stt/server.py).
MARKER_WAIT = "kyutai_stt_marker_wait_seconds"
# What an idle job process may use (percent of a core) while the worker counts as quiet.
IDLE_PROCESS_CPU_PCT = 1.5
IDLE_LEVEL_S = 10.0
TINY_MODELS_DIR = REPO / ".data" / "bench-tiny-speech"
# Stage name in stages_ms_p50 -> the agent's per-turn record key.
AGENT_STAGES = {
    "end_of_turn": "end_of_turn_ms",
    "stt_final": "stt_final_ms",
    "llm_first_token": "llm_ttft_ms",
    "tts_first_audio": "tts_ttfa_ms",
}


# -- the worker's processes ---------------------------------------------------------------------
@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    rss_mb: float
    created: float
    # CPU of its children that have exited (and were reaped): job processes come and go.
    reaped_cpu_s: float = 0.0
    # Open file descriptors (sockets, pipes, files): a leak shows as growth over a soak.
    fds: int = 0
    # Memory only this process holds (USS, from /proc/<pid>/smaps): a job process forked from
    # livekit-agents' forkserver shares most of its RSS with it, copy-on-write. Read only when asked.
    uss_mb: float = 0.0


def sample_tree(root_pid: int, private_memory: bool = False) -> dict[int, ProcSample]:
    """CPU seconds and RSS of a process and all its descendants (and USS with ``private_memory``:
    it reads every mapping, too slow for the tight polls)."""
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
                uss = p.memory_full_info().uss / 2**20 if private_memory else 0.0
                samples[p.pid] = ProcSample(t.user + t.system, p.memory_info().rss / 2**20, p.create_time(),
                                            t.children_user + t.children_system, p.num_fds(), uss)
        except psutil.Error:
            continue
    return samples


def sample_cores(groups: dict[str, list[int]]) -> dict[str, float]:
    """Busy CPU seconds of each group of process trees (a process and all its descendants), and of
    this bench's own process alone (``bench``: its kiosk processes are a group of their own)."""
    shares = {name: sum(tree_cpu_s(sample_tree(pid)) for pid in pids) for name, pids in groups.items()}
    own = psutil.Process().cpu_times()
    return {**shares, "bench": own.user + own.system}


def cores_pct(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Where the cores went between two samples, per group (100 = one core), and their ``total``."""
    shares = {name: round(100 * (after[name] - before[name]) / seconds, 1) for name in after}
    return {**shares, "total": round(sum(shares.values()), 1)}


def engine_histogram(url: str | None, api_key: str, name: str) -> tuple[float, float] | None:
    """(sum, count) of one of a Kyutai engine's Prometheus histograms (``url``: its ws:// address),
    or None when there is no engine or it does not answer."""
    if url is None:
        return None
    request = urllib.request.Request(http_url(url, "/metrics"), headers={API_KEY_HEADER: api_key})
    found: dict[str, float] = {}
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            for line in r.read().decode().splitlines():
                metric, _, value = line.partition(" ")
                if metric in (f"{name}_sum", f"{name}_count"):
                    found[metric] = float(value)
    except OSError:
        return None
    if len(found) < 2:
        return None
    return found[f"{name}_sum"], found[f"{name}_count"]


def histogram_mean_ms(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The mean of what a histogram observed between two reads, in ms."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(1000 * (after[0] - before[0]) / (after[1] - before[1]), 1)


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


# -- figures from the kiosks' records -----------------------------------------------------------
def turn_figures(records: list[dict[str, Any]], never_spoken: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The level's turn keys (``bench.turns``) and each stage's per-turn values over answered turns."""
    kiosks: list[tuple[list[Utterance], list[float]]] = []
    stages: dict[str, list[float]] = {name: [] for name in (*AGENT_STAGES, "member_final", "transport")}
    v2v: list[float] = []
    for rec in records:
        if not rec["ready"]:
            continue
        utterances: list[Utterance] = []
        nexts = next_starts([u["started"] for u in rec["utterances"]])
        for u, nxt in zip(rec["utterances"], nexts, strict=True):
            agent = match_agent_turn(u["voice_end"], u["first_audio"], rec["agent_turns"]) or {}
            final = u["member_final"]
            utt = Utterance(
                voice_end=u["voice_end"], next_start=nxt, first_audio=u["first_audio"],
                member_final_ms=None if final is None else 1000 * (final - u["voice_end"]),
                llm_ttft_ms=agent.get("llm_ttft_ms"), tts_ttfa_ms=agent.get("tts_ttfa_ms"),
            )
            utterances.append(utt)
            # Stage medians over the same answered turns as v2v, nothing else.
            fate = outcome(utt)
            if not fate.answered:
                continue
            if fate.v2v_ms is not None:
                v2v.append(round(fate.v2v_ms, 1))
            for name, key in AGENT_STAGES.items():
                if agent.get(key) is not None:
                    stages[name].append(agent[key])
            if utt.member_final_ms is not None:
                stages["member_final"].append(utt.member_final_ms)
            if agent.get("playout_at") is not None and u["first_audio"] is not None:
                stages["transport"].append(1000 * (u["first_audio"] - agent["playout_at"]))
        kiosks.append((utterances, rec["onsets"]))
    figures = summarize_kiosks(kiosks, never_spoken=never_spoken)
    figures["overlapped_turns"] = sum(u["overlapped"] for r in records for u in r["utterances"])
    figures["junk_transcripts"] = sum(r["junk_transcripts"] for r in records)
    figures["agent_turns"] = sum(len(r["agent_turns"]) for r in records)
    figures["v2v_ms"] = v2v  # every answered turn's, kiosk by kiosk: what an interval is drawn from
    figures.update(jitter_buffers(records))
    return figures, stages


def jitter_buffers(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """How long WebRTC's jitter buffers held the audio, on average over the level's sessions: the
    agent's for the member's voice (its last turn record's), the kiosk's for JARVIS's answers. A
    part of every turn's voice-to-voice time no stage timer sees; it grows when packets come unevenly."""
    def mean_delay(buffers: list[list[dict[str, Any]]]) -> float | None:
        delays = [b["mean_delay_ms"] for each in buffers for b in each]
        return round(statistics.fmean(delays), 1) if delays else None

    member = [r["agent_turns"][-1].get("member_audio_jitter") or [] for r in records if r["agent_turns"]]
    return {
        "member_jitter_buffer_ms": mean_delay(member),
        "answer_jitter_buffer_ms": mean_delay([r.get("answer_audio_jitter") or [] for r in records]),
    }


def stage_medians(stages: dict[str, list[float]]) -> dict[str, float | None]:
    """Each stage's p50 as every other figure takes it (nearest rank, ``None`` when empty)."""
    return {name: percentile(values, 50) for name, values in stages.items()}


def fit_line(points: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Least squares ``y = fixed + slope * x``; (None, None) without two distinct x."""
    xs = {x for x, _ in points}
    if len(xs) < 2:
        return None, None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope


def add_cost_fit(idle: dict[str, float], rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Fixed cost + slope per session (top level); each row's marginal per-session cost."""
    top: dict[str, float | None] = {}
    for key in ("cpu_pct", "rss_mb", "uss_mb"):
        points = [(0.0, idle[key]), *((float(r["sessions"]), r[f"{key}_total"]) for r in rows)]
        fixed, slope = fit_line(points)
        top[f"{key}_fixed"] = None if fixed is None else round(fixed, 1)
        top[f"{key}_per_session_slope"] = None if slope is None else round(slope, 1)
        for r in rows:
            live = max(1, r["sessions"] - r["failed_sessions"])
            base = fixed if fixed is not None else 0.0
            r[f"{key}_per_session"] = round((r[f"{key}_total"] - base) / live, 1)
    return top


# -- the kiosk processes --------------------------------------------------------------------------
class KioskPool:
    """Kiosk processes (spawned: no copy of this process's state), driven step by step."""

    def __init__(self, specs: list[VisitSpec], sentences: list[tuple[str, np.ndarray]], turns: int, *,
                 per_process: int, soak_until: float | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(0, len(specs), per_process):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=kiosk_process, args=(child, specs[i:i + per_process], sentences,
                                                           turns, soak_until), daemon=True)
            proc.start()
            child.close()  # so a dead kiosk process reads as EOF here, not as a hang
            self.conns.append(parent)
            self.procs.append(proc)

    async def step(self, command: str | None, expect: str) -> list[dict[str, Any]]:
        """Send ``command`` to every process (None: just wait) and gather their ``expect`` replies."""
        async def one(conn: Connection) -> list[dict[str, Any]]:
            try:
                if command is not None:
                    conn.send(command)
                phase, payload = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError) as exc:
                progress(f"  a kiosk process failed ({type(exc).__name__})")
                return []
            if phase != expect:
                progress(f"  a kiosk process said {phase!r}, not {expect!r}")
            return list(payload or [])

        return [r for records in await asyncio.gather(*(one(c) for c in self.conns)) for r in records]

    async def close(self) -> None:
        for proc in self.procs:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
        for conn in self.conns:
            conn.close()


# -- the bench ----------------------------------------------------------------------------------
@dataclass
class Bench:
    stack: LocalStack
    token_url: str
    gym_key: str
    badges: list[str]
    worker_pid: int
    engine_pids: list[int]
    sfu_pids: list[int]
    service_pids: list[int]  # the token service, PostgreSQL, Redis, the LLM stand-in
    sentences: list[tuple[str, np.ndarray]]
    answer_timeout_s: float
    join_timeout_s: float
    profile_dir: Path | None = None
    metrics_url: str | None = None
    # The STT engine's address and key: each level reads how long its end-of-turn markers waited there.
    stt_url: str | None = None
    engine_api_key: str = ""
    # Each level's raw kiosk records, one JSON line per level: what a slow turn's post-mortem reads.
    records_path: Path | None = None
    kiosks_per_process: int = KIOSKS_PER_PROCESS
    # How the simulated members time their sentences (bench.voice_kiosks.VisitSpec's fields: overload
    # makes the kiosks independent, voice_loop keeps the timing its earlier figures had).
    first_turn_spread_s: float = 0.0
    pause_s: tuple[float, float] = PAUSE_S
    next_badge: int = 0

    def specs(self, n: int) -> list[VisitSpec]:
        out = []
        for i in range(n):
            badge = self.badges[self.next_badge % len(self.badges)]
            self.next_badge += 1
            out.append(VisitSpec(i, self.token_url, self.gym_key, badge, self.answer_timeout_s, self.join_timeout_s,
                                 first_turn_spread_s=self.first_turn_spread_s if n > 1 else 0.0,
                                 pause_s=self.pause_s))
        return out

    def engines(self) -> dict[int, ProcSample]:
        samples: dict[int, ProcSample] = {}
        for pid in self.engine_pids:
            samples.update(sample_tree(pid))
        return samples

    async def worker_tasks(self) -> int | None:
        """The worker's main-loop task count (its ``jarvis_worker_event_loop_tasks`` gauge)."""
        url = self.metrics_url
        if url is None:
            return None

        def read() -> int | None:
            with urllib.request.urlopen(url, timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("jarvis_worker_event_loop_tasks"):
                        return int(float(line.rsplit(" ", 1)[1]))
            return None

        try:
            return await asyncio.to_thread(read)
        except OSError:
            return None

    async def snapshot(self) -> tuple[float, dict[int, ProcSample], dict[int, ProcSample]]:
        """Now, the worker's process tree and the engines' processes."""
        tree = await asyncio.to_thread(sample_tree, self.worker_pid, True)
        return time.perf_counter(), tree, await asyncio.to_thread(self.engines)

    async def idle(self) -> dict[str, float]:
        """The worker with no session: the fixed cost's point at N = 0."""
        t0, tree0, _ = await self.snapshot()
        await asyncio.sleep(IDLE_LEVEL_S)
        t1, tree1, _ = await self.snapshot()
        pids = set(tree0) & set(tree1)
        return {
            "cpu_pct": round(100 * cpu_between(tree0, tree1, pids) / (t1 - t0), 1),
            "rss_mb": round(tree1.get(self.worker_pid, ProcSample(0, 0, 0)).rss_mb, 1),
            "uss_mb": round(tree1.get(self.worker_pid, ProcSample(0, 0, 0)).uss_mb, 1),
        }

    async def level(self, sessions: int, turns: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
        progress(f"level: {sessions} concurrent session(s), {turns} turn(s) each")
        level_began = time.time()
        before_level = await asyncio.to_thread(sample_tree, self.worker_pid)
        pool = KioskPool(self.specs(sessions), self.sentences, turns, per_process=self.kiosks_per_process)
        opened = await pool.step(None, "opened")
        for r in opened:
            if r["error"]:
                progress(f"  kiosk {r['index']}: {r['error']}")
        ready = sum(r["ready"] for r in opened)
        progress(f"  {ready}/{sessions} sessions ready, {sum(r['greeted'] for r in opened)} greeted")
        # The pool starts new idle processes for the ones the sessions took: let that finish first.
        settle_s = await wait_until_quiet(self.worker_pid, what="idle-process refill", timeout_s=60,
                                          max_cpu_pct=10, only_new_since=level_began)
        profile = TreeProfile(self.worker_pid, self.profile_dir, f"sessions-{sessions}") if self.profile_dir else None
        if profile:
            profile.start()
        groups = {"worker": [self.worker_pid], "engines": self.engine_pids,
                  "kiosks": [proc.pid for proc in pool.procs], "sfu": self.sfu_pids, "services": self.service_pids}
        cores0 = await asyncio.to_thread(sample_cores, groups)
        markers0 = await asyncio.to_thread(engine_histogram, self.stt_url, self.engine_api_key, MARKER_WAIT)
        t0, tree0, eng0 = await self.snapshot()
        records = await pool.step("talk", "talked")
        t1, tree1, eng1 = await self.snapshot()
        cores1 = await asyncio.to_thread(sample_cores, groups)
        markers1 = await asyncio.to_thread(engine_histogram, self.stt_url, self.engine_api_key, MARKER_WAIT)
        profiled = await asyncio.to_thread(profile.stop) if profile else None
        await pool.step("leave", "left")
        await pool.close()
        failed = sessions - sum(r["ready"] for r in records)
        if self.records_path is not None:
            with self.records_path.open("a") as out:
                out.write(json.dumps({"sessions": sessions, "records": records}) + "\n")
        figures, stages = turn_figures(records, never_spoken=turns * failed)
        seconds = max(t1 - t0, 1e-6)
        # The processes hosting this level's sessions existed when it began; new ones are refills.
        hosts = {p for p in tree1 if p in before_level and p != self.worker_pid}
        busy = {p for p in hosts if p in tree0 and tree1[p].cpu_s - tree0[p].cpu_s > 0.05 * seconds}
        row = {
            "sessions": sessions,
            **figures,
            "cpu_pct_total": round(100 * cpu_between(tree0, tree1, hosts | {self.worker_pid}) / seconds, 1),
            "rss_mb_total": round(tree1.get(self.worker_pid, ProcSample(0, 0, 0)).rss_mb
                                  + sum(tree1[p].rss_mb for p in busy), 1),
            "uss_mb_total": round(tree1.get(self.worker_pid, ProcSample(0, 0, 0)).uss_mb
                                  + sum(tree1[p].uss_mb for p in busy), 1),
            "job_processes": len(busy),
            "failed_sessions": failed,
            "kiosk_processes": len(pool.procs),
            "engines_cpu_pct": round(100 * cpu_between(eng0, eng1, set(eng1)) / seconds, 1),
            "engines_rss_mb": round(sum(s.rss_mb for s in eng1.values()), 1),
            "cores_pct": cores_pct(cores0, cores1, seconds),
            "stt_marker_wait_ms_mean": histogram_mean_ms(markers0, markers1),
            "stages_ms_p50": stage_medians(stages),
            "talk_s": round(seconds, 1),
            "settle_s": round(settle_s, 1),
        }
        if profiled is not None:
            row["profile"] = profiled
        progress(f"  v2v p50 {row['v2v_ms_p50']} ms, p95 {row['v2v_ms_p95']} ms, answered {row['answered']}"
                 f"/{row['turns']} (late {row['late_turns']}), lost {row['lost_turns']}, junk answers"
                 f" {row['junk_answers']}, agent turn records {row['agent_turns']}")
        progress("  cores (% of one): " + ", ".join(f"{name} {pct}" for name, pct in row["cores_pct"].items())
                 + f" (of {100 * (psutil.cpu_count() or 1)})")
        # Sessions end, job processes exit and the pool refills: wait before the next level.
        await wait_until_quiet(self.worker_pid, what="worker after the level", timeout_s=60, max_cpu_pct=15)
        return row, stages

    async def soak(self, sessions: int, turns: int, minutes: float) -> tuple[dict[str, Any], dict[str, list[float]]]:
        progress(f"soak: {sessions} kiosks visiting again and again for {minutes:g} min")
        began = time.perf_counter()
        deadline = began + 60 * minutes
        timeline: list[dict[str, float]] = []
        _, tree0, eng0 = await self.snapshot()
        tasks_before = await self.worker_tasks()
        pool = KioskPool(self.specs(sessions), self.sentences, turns, soak_until=time.time() + 60 * minutes,
                         per_process=self.kiosks_per_process)
        await pool.step(None, "opened")

        async def sampler() -> None:
            while time.perf_counter() < deadline:
                tree = await asyncio.to_thread(sample_tree, self.worker_pid)
                timeline.append({
                    "t_s": round(time.perf_counter() - began, 1),
                    "worker_rss_mb": round(tree.get(self.worker_pid, ProcSample(0, 0, 0)).rss_mb, 1),
                    "tree_rss_mb": round(sum(s.rss_mb for s in tree.values()), 1),
                    "worker_fds": tree.get(self.worker_pid, ProcSample(0, 0, 0)).fds,
                    "tree_fds": sum(s.fds for s in tree.values()),
                    "job_processes": len(tree) - 1,
                    "worker_tasks": await self.worker_tasks() or 0,
                    "engines_rss_mb": round(sum(s.rss_mb for s in (await asyncio.to_thread(self.engines)).values()), 1),
                })
                await asyncio.sleep(15)

        records, _ = await asyncio.gather(pool.step("talk", "talked"), sampler())
        seconds = time.perf_counter() - began
        _, tree1, eng1 = await self.snapshot()
        await pool.step("leave", "left")
        await pool.close()
        # Idle again, as before the first visit: what a session left behind on the main loop stays.
        await asyncio.sleep(15)  # three of the worker's samples (agent.worker.TASKS_SAMPLE_S)
        tasks_after = await self.worker_tasks()
        failed = sum(1 for r in records if not r["ready"])
        figures, stages = turn_figures(records, never_spoken=turns * failed)
        # Memory growth from the first sample after a warm-up minute (every kiosk has come once).
        first = next((s for s in timeline if s["t_s"] >= 60), timeline[0])
        last = timeline[-1]
        row = {
            "sessions": sessions,
            **figures,
            # Over the whole soak the job processes come and go: the tree as a whole, per kiosk.
            "cpu_pct_per_session": round(100 * (tree_cpu_s(tree1) - tree_cpu_s(tree0)) / seconds / sessions, 1),
            "rss_mb_per_session": round(sum(s.rss_mb for s in tree1.values()) / sessions, 1),
            "uss_mb_per_session": round(sum(s.uss_mb for s in tree1.values()) / sessions, 1),
            "visits": len(records),
            "failed_sessions": failed,
            "engines_cpu_pct": round(100 * cpu_between(eng0, eng1, set(eng1)) / seconds, 1),
            "stages_ms_p50": stage_medians(stages),
            "minutes": round(seconds / 60, 1),
            "worker_rss_growth_mb": round(last["worker_rss_mb"] - first["worker_rss_mb"], 1),
            "worker_rss_growth_pct": round(100 * (last["worker_rss_mb"] / max(first["worker_rss_mb"], 1e-9) - 1), 2),
            "worker_fds_growth": last["worker_fds"] - first["worker_fds"],
            "tree_fds_growth": last["tree_fds"] - first["tree_fds"],
            "tree_rss_growth_mb": round(last["tree_rss_mb"] - first["tree_rss_mb"], 1),
            "engines_rss_growth_mb": round(last["engines_rss_mb"] - first["engines_rss_mb"], 1),
            "worker_tasks_idle_before": tasks_before,
            "worker_tasks_idle_after": tasks_after,
            "worker_tasks_growth": None if tasks_before is None or tasks_after is None else tasks_after - tasks_before,
            "timeline": timeline,
        }
        return row, stages


def pid_of(stack: LocalStack, name: str) -> int:
    for proc_name, proc in stack.processes:
        if proc_name == name:
            return proc.pid
    raise StackError(f"{name} is not running")


def sfu_pids(stack: LocalStack) -> list[int]:
    """The LiveKit nodes running now (a node restarted on a fresh port leaves its dead first try listed)."""
    return [proc.pid for name, proc in stack.processes if name.startswith("livekit") and proc.poll() is None]


def service_pids(stack: LocalStack) -> list[int]:
    """The stack's other services running now: the token service, the LLM stand-in, PostgreSQL, Redis."""
    services = ("token_service", "llm-standin", "postgres", "redis")
    return [proc.pid for name, proc in stack.processes if name in services and proc.poll() is None]


async def prepare(stack: LocalStack, max_sessions: int) -> tuple[str, list[str]]:
    await migrate(stack.pg_dsn, seed_demo=False)
    return await make_bench_gym(stack.pg_dsn, max(40, 4 * max_sessions))


async def measure(bench: Bench, levels: list[int], turns: int, soak: float | None,
                  soak_sessions: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows, and the top-level keys: stage medians over every level's answered turns, the cost fit."""
    all_stages: dict[str, list[float]] = {}
    top: dict[str, Any] = {}
    if soak is not None:
        row, stages = await bench.soak(soak_sessions, turns, soak)
        results = [row]
        top.update(dict.fromkeys(("cpu_pct_fixed", "cpu_pct_per_session_slope", "rss_mb_fixed",
                                  "rss_mb_per_session_slope", "uss_mb_fixed", "uss_mb_per_session_slope")))
        all_stages = stages
    else:
        progress(f"idle level: the worker with no session for {IDLE_LEVEL_S:.0f} s")
        idle = await bench.idle()
        results = []
        for n in levels:
            row, stages = await bench.level(n, turns)
            results.append(row)
            row_measured(row, echo=False)
            for name, values in stages.items():
                all_stages.setdefault(name, []).extend(values)
        top.update(add_cost_fit(idle, results))
        top["idle"] = idle
    top["stages_ms_p50"] = stage_medians(all_stages)
    return results, top


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
        progress(f"starting the agent worker with {largest + 1} idle job processes")
        metrics_port, metrics_dir = free_port(), stack.workdir / "agent-metrics"
        metrics_dir.mkdir(exist_ok=True)  # prometheus_client writes there from the first import
        stack.start_agent_worker({
            # Its metrics (the soak reads the main loop's task count there), from every process.
            "JARVIS_PROMETHEUS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            **llm_env, **speech_env,
            "JARVIS_SPEECH__MODE": "kyutai",
            # One job process per session: enough warm ones for the largest level, plus one.
            "JARVIS_NUM_IDLE_PROCESSES": str(largest + 1),
            "JARVIS_MAX_SESSIONS": str(largest + 5),
            "NO_TORCH_COMPILE": "1",
            "OMP_NUM_THREADS": "1",
        })
        worker = pid_of(stack, "agent")
        progress("waiting for the worker's idle processes to finish warming up")
        # The worker starts its idle processes over time: wait until they are all there and idle.
        # (a thread executor runs every session in the worker itself: no idle processes to wait for)
        threads = os.environ.get("JARVIS_JOB_EXECUTOR", "process") == "thread"
        warm_s = asyncio.run(wait_until_quiet(worker, what="worker warm-up", timeout_s=180, max_cpu_pct=15,
                                              min_processes=1 if threads else largest + 2))
        progress(f"  worker quiet after {warm_s:.0f} s")
        bench = Bench(
            stack=stack, token_url=url, gym_key=key, badges=badges, worker_pid=worker,
            engine_pids=[pid_of(stack, "kyutai-stt"), pid_of(stack, "kyutai-tts")],
            sfu_pids=sfu_pids(stack), service_pids=service_pids(stack), stt_url=speech_env.get("KYUTAI_STT_URL"),
            engine_api_key=speech_env.get("KYUTAI_STT_API_KEY", ""), sentences=sentences,
            answer_timeout_s=args.answer_timeout, join_timeout_s=args.join_timeout, profile_dir=args.profile,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics", records_path=args.records,
            kiosks_per_process=args.kiosks_per_process,
        )
        results, top = asyncio.run(measure(bench, levels, args.turns, args.soak, args.soak_sessions))
        if not any(r["agent_turns"] for r in results):
            notes.append("the kiosks received no turn record from the agent (jarvis.turn_metrics): the agent's"
                         " stage figures and overhead_ms are null")
        if any(r["junk_transcripts"] or r["junk_answers"] for r in results):
            notes.append("the tiny random-weight STT transcribes words on silence: junk_transcripts and"
                         " junk_answers count them; an overlapped turn began while the agent answered junk")
        if llm_env:
            notes.append(llm_banner)
    emit("voice_loop", weights=models.weights, quick=args.quick, results=results, **top,
         turns_per_session=args.turns, kiosks_per_process=args.kiosks_per_process, llm=llm, soak_minutes=args.soak,
         notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest and the largest level only")
    parser.add_argument("--sessions", type=lambda s: [int(n) for n in s.split(",")], default=None,
                        help="comma-separated levels (default 1,2,4,8,16,20; quick: 1,4)")
    parser.add_argument("--turns", type=int, default=None, help="sentences per session (default 4; quick: 2)")
    parser.add_argument("--answer-timeout", type=float, default=LOST_AFTER_S,
                        help="seconds a kiosk waits for an answer (an answer later than 10 s is lost anyway)")
    parser.add_argument("--join-timeout", type=float, default=120.0,
                        help="seconds for JARVIS to join a kiosk's room")
    parser.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                        help="soak instead of levels: --soak-sessions kiosks for MINUTES (not in CI)")
    parser.add_argument("--soak-sessions", type=int, default=20)
    parser.add_argument("--kiosks-per-process", type=int, default=KIOSKS_PER_PROCESS, metavar="N",
                        help=f"simulated kiosks sharing one process and its event loop (default {KIOSKS_PER_PROCESS})")
    parser.add_argument("--records", type=Path, default=None, metavar="FILE",
                        help="append each level's raw kiosk records (every turn's times, the agent's turn records)"
                             " to FILE, one JSON line per level")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="profile the worker's tree while each level talks: CPU per thread name (/proc) and"
                             " per Python function (py-spy); each row gets a 'profile', raw stacks go to DIR. py-spy"
                             " perturbs a loaded worker: read where the time goes, not that level's turns")
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
