"""Two LiveKit nodes on one Redis, two workers, two engine sets: a cluster on loopback (issue 12, part 4).

Each node has its own address (127.0.0.2, 127.0.0.3: its node IP, as each host of a cluster has its
own) and ports; both share one Redis database, so a room on one node is reachable through the other.
Four kiosks connect through either node, alternately: rooms land on both nodes, sessions on both
workers, and every kiosk hears JARVIS greet it. Then node A is lost (SIGKILL, as a crashed host):
sessions on node B go on (a spoken turn is answered there), and each kiosk of node A, once its link
is gone, opens a new session and joins through node B, where JARVIS greets it again.

Placement: on one machine both nodes report the same system load, so production's ``sysload``
selector cannot tell them apart (it would put every room on whichever node sorts first). The test
gives each node its own region and the ``regionaware`` selector (still filtered by the sysload
limit): a room lives on the node its kiosk entered through, so which sessions node A's loss takes
is known in advance. Both workers register through node B: in production they reach the cluster
through one name, which stops resolving to a dead node; here there is no such name, so they use
the node that stays up, and node A's sessions are served by agents signalling through node B
(the cross-node path through Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import rtc

from bench.voice_kiosks import BenchKiosk
from jarvis_local.kiosk_sim import SessionRefused, SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LiveKitNode, LocalStack
from tests.conftest import LYON_KEY

pytestmark = pytest.mark.integration

AGENT = "jarvis-cluster"
# Four, not eight: eight sessions with their four engines starved the 2-core box (STT "60 s of audio
# waiting", greetings later than 90 s, 437 s to fail; once past the 600 s bound). Two per node still
# shows rooms on both nodes, sessions on both workers and node A's kiosks moving to node B.
KIOSKS = 4
# The stack's own node uses Redis database 1: the cluster's nodes must not see it (a third node
# would take rooms and other tests' rooms would land on nodes this test kills).
CLUSTER_REDIS_DB = 3
# Each worker takes at most this many sessions: four cannot all go to one (spread over workers),
# and the two reconnecting kiosks find room while node A's dead sessions are still being closed.
MAX_SESSIONS_PER_WORKER = 3
REGIONS = [{"name": "region-a", "lat": 45.76, "lon": 4.84}, {"name": "region-b", "lat": 44.84, "lon": -0.58}]
QUESTION = "Il reste de la place au cours de yoga"
# Generous: four sessions, four engines, two nodes and two workers share two loaded cores.
JOIN_S = 180.0
AGENT_S = 45.0
GREETING_S = 90.0
ANSWER_S = 60.0


@dataclass
class Cluster:
    node_a: LiveKitNode
    node_b: LiveKitNode
    token_url: str
    workers: tuple[str, str]  # their log names


def node_overrides(region: str) -> dict[str, object]:
    return {
        "region": region,
        "node_selector": {"kind": "regionaware", "sort_by": "rooms", "sysload_limit": 0.7, "regions": REGIONS},
    }


@pytest.fixture(scope="module")
def cluster_nodes(stack: LocalStack) -> Iterator[tuple[LiveKitNode, LiveKitNode]]:
    a = stack.start_livekit_node("livekit-a", "127.0.0.2", CLUSTER_REDIS_DB, node_overrides("region-a"))
    b = stack.start_livekit_node("livekit-b", "127.0.0.3", CLUSTER_REDIS_DB, node_overrides("region-b"))
    yield a, b
    for name in ("livekit-a", "livekit-b"):
        if name in stack.livekit_nodes:
            stack.stop_livekit_node(name)


@pytest.fixture(scope="module")
async def cluster(
    stack: LocalStack, cluster_nodes: tuple[LiveKitNode, LiveKitNode], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    node_a, node_b = cluster_nodes
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech-cluster")))
    # Two replicas of each engine: one STT and one TTS per worker, as two engine hosts would be.
    engines = await asyncio.to_thread(
        lambda: stack.start_speech_engines(models, 8, 2, concurrently=True)
    )
    stt, tts = engines["KYUTAI_STT_URLS"].split(","), engines["KYUTAI_TTS_URLS"].split(",")
    async with LLMStandIn(lambda _request: Say("D'accord, c'est noté.")) as llm:
        workers = ("agent-cluster-a", "agent-cluster-b")

        def start_worker(i: int, name: str) -> None:
            env = {
                **engines, **llm.worker_env,
                "KYUTAI_STT_URL": stt[i], "KYUTAI_STT_URLS": stt[i],
                "KYUTAI_TTS_URL": tts[i], "KYUTAI_TTS_URLS": tts[i],
                "LIVEKIT_URL": node_b.url, "JARVIS_AGENT_NAME": AGENT,
                "JARVIS_NUM_IDLE_PROCESSES": "1", "JARVIS_MAX_SESSIONS": str(MAX_SESSIONS_PER_WORKER),
            }  # fmt: skip
            # Generous: on the loaded 2-core box a worker took over 90 s to register (load 18).
            stack.start_agent_worker(env, name, timeout_s=240)

        # Both at once: each waits for its registration with LiveKit.
        await asyncio.gather(*(asyncio.to_thread(start_worker, i, name) for i, name in enumerate(workers)))
        token_url = await asyncio.to_thread(
            stack.start_token_service, {"JARVIS_AGENT_NAME": AGENT, "LIVEKIT_URL": node_b.url}
        )
        yield Cluster(node_a, node_b, token_url, workers)


def rooms_on(node: LiveKitNode) -> int:
    """The rooms this node hosts, from its own Prometheus endpoint (ListRooms is cluster-wide)."""
    with urllib.request.urlopen(node.metrics_url, timeout=5) as r:
        text = r.read().decode()
    found = re.search(r"^livekit_room_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def sessions_of(stack: LocalStack, worker: str) -> set[str]:
    """The sessions a worker ran: its job processes' "session …: ready" lines."""
    return set(re.findall(r"session (\S+): ready", stack.log_tail(worker, 100_000)))


async def visit(cluster: Cluster, kiosk_id: str, node: LiveKitNode) -> tuple[BenchKiosk, str]:
    """The gym backend opens a session (again while the workers are full: 503) and the kiosk joins
    through ``node``; a kiosk JARVIS does not join within AGENT_S leaves and starts over, as the
    kiosk does (on a starved machine a worker can fail a job request: its job process not ready; a
    kiosk's WebRTC connection can time out)."""

    async def opened() -> dict[str, str] | None:
        try:
            return await open_session(cluster.token_url, LYON_KEY, "LYON-0001", kiosk_id=kiosk_id)
        except SessionRefused as refused:
            if refused.status != 503:
                raise
            return None

    deadline = time.perf_counter() + JOIN_S
    while True:
        session = await poll(opened, JOIN_S, every_s=1.0, what=f"a session for {kiosk_id}")
        kiosk = BenchKiosk()  # it also keeps the agent's own record of each turn (its stage times)
        try:
            await kiosk.join(node.url, session["token"])
            if await poll(kiosk.agent, AGENT_S, every_s=0.1):
                return kiosk, session["session_id"]
        except rtc.ConnectError:  # seen at load 30-40: WebRTC's "wait_pc_connection timed out"
            pass
        with contextlib.suppress(Exception):
            await asyncio.wait_for(kiosk.leave(), 10)
        if time.perf_counter() > deadline:
            raise AssertionError(f"JARVIS never joined {kiosk_id} on {node.name} in {JOIN_S:.0f} s")


async def greeted(kiosk: SimulatedKiosk, since: float) -> float:
    return await poll(lambda: kiosk.heard.first_speech_after(since), GREETING_S, every_s=0.05, what="the greeting")


def link_lost(kiosk: SimulatedKiosk) -> bool:
    return kiosk.room.connection_state != rtc.ConnectionState.CONN_CONNECTED


# Setup included: four engines, two workers and two nodes start on two cores (~2 min quiet, 5 under load).
# Not an expected failure since 2026-12-04: 10 of 10 runs passed here that day (4 beside a busy loop on one
# core), and every CI run since 2026-12-03. One run on 2026-12-03 missed node B's answer within 60 s; its
# logs were not kept and it has not recurred. The agent's stage record, now printed, shows where that
# turn's seconds go: its STT final comes seconds late while node A's kiosks start new sessions beside it.
@pytest.mark.timeout(600)
async def test_kiosks_spread_over_two_nodes_and_two_workers_and_survive_losing_a_node(
    stack: LocalStack, cluster: Cluster
) -> None:
    nodes = [cluster.node_a, cluster.node_b]
    kiosks: dict[str, tuple[BenchKiosk, LiveKitNode]] = {}
    sessions: dict[str, str] = {}
    reconnected: list[BenchKiosk] = []
    try:
        # One kiosk after the other, alternating the node, each greeted before the next comes: the
        # test reads which node and worker served whom.
        for number in range(KIOSKS):
            kiosk_id, node = f"cluster-{number + 1}", nodes[number % 2]
            kiosk, session_id = await visit(cluster, kiosk_id, node)
            kiosks[kiosk_id], sessions[kiosk_id] = (kiosk, node), session_id
        for kiosk, _node in kiosks.values():
            heard = await greeted(kiosk, 0)
            # Heard out: node B's turn below must time JARVIS's answer, not the greeting's tail.
            await poll(lambda: kiosk.heard.stopped_after(heard, 0.6), GREETING_S, every_s=0.05,  # noqa: B023
                       what="the greeting's end")

        # Each node's room gauge, read until the rooms of every kiosk are counted (a node's count
        # once read 3 while its fourth kiosk was already greeted).
        def counted() -> dict[str, int] | None:
            per_node = {node.name: rooms_on(node) for node in nodes}
            return per_node if sum(per_node.values()) >= KIOSKS else None

        per_node = await poll(counted, 20, every_s=0.5) or {node.name: rooms_on(node) for node in nodes}
        per_worker = {name: sessions_of(stack, name) & set(sessions.values()) for name in cluster.workers}
        print("\ncluster: sessions per node", per_node, "per worker", {k: len(v) for k, v in per_worker.items()})
        assert per_node == {"livekit-a": KIOSKS // 2, "livekit-b": KIOSKS // 2}, per_node
        assert all(per_worker.values()), f"a worker ran no session: {per_worker}"
        assert sum(len(v) for v in per_worker.values()) == KIOSKS, per_worker

        # Node A is lost, as a crashed host: its kiosks' links go, node B's sessions go on.
        lost_at = time.perf_counter()
        await asyncio.to_thread(stack.stop_livekit_node, "livekit-a", kill=True)
        on_a = {k: kiosk for k, (kiosk, node) in kiosks.items() if node is cluster.node_a}
        on_b = {k: kiosk for k, (kiosk, node) in kiosks.items() if node is cluster.node_b}

        async def reconnect(kiosk_id: str, old: SimulatedKiosk) -> dict[str, float]:
            await poll(lambda: link_lost(old), 60, every_s=0.1, what=f"{kiosk_id} to notice node A is gone")
            noticed = time.perf_counter()
            with contextlib.suppress(Exception):  # its node is gone: leaving cannot be clean
                await asyncio.wait_for(old.leave(), 10)
            kiosk, _ = await visit(cluster, kiosk_id, cluster.node_b)
            reconnected.append(kiosk)
            heard = await greeted(kiosk, noticed)
            return {"noticed_s": noticed - lost_at, "reconnect_to_greeting_s": heard - noticed,
                    "loss_to_greeting_s": heard - lost_at}  # fmt: skip

        async def turn_on_b(kiosk: BenchKiosk) -> tuple[float, dict[str, object]]:
            records = len(kiosk.agent_turns)
            turn = await kiosk.say(await asyncio.to_thread(synthesize_french, QUESTION), QUESTION)
            answered = await kiosk.hear_answer(turn, ANSWER_S)
            assert answered.v2v_ms is not None, "a session on node B was not answered after node A's loss"
            # The agent's own stage times for that turn (sent once its answer has played): where the
            # seconds went while node A's kiosks came back beside it.
            stages = await poll(lambda: kiosk.agent_turns[records:], 30, every_s=0.1)
            keys = ("end_of_turn_ms", "stt_final_ms", "llm_ttft_ms", "tts_ttfa_ms", "agent_v2v_ms")
            return answered.v2v_ms, {k: stages[-1].get(k) for k in keys} if stages else {}

        # At once: the survivor's turn while node A's kiosks find their way back.
        survivor_turn = asyncio.create_task(turn_on_b(next(iter(on_b.values()))))
        reconnects = await asyncio.gather(*(reconnect(k, kiosk) for k, kiosk in on_a.items()))
        v2v_ms, survivor_stages = await survivor_turn
        assert all(kiosk.room.connection_state == rtc.ConnectionState.CONN_CONNECTED for kiosk in on_b.values())
        assert rooms_on(cluster.node_b) >= KIOSKS // 2 + len(on_a), "the reconnected kiosks are not on node B"
        figures = {
            "sessions_per_node": per_node,
            "sessions_per_worker": {k: len(v) for k, v in per_worker.items()},
            "node_b_turn_after_loss_v2v_ms": round(v2v_ms),
            "node_b_turn_agent_stages_ms": survivor_stages,
            "reconnects": [{k: round(v, 2) for k, v in r.items()} for r in reconnects],
            "reconnect_to_greeting_s_max": round(max(r["reconnect_to_greeting_s"] for r in reconnects), 2),
        }
        print("cluster figures:", json.dumps(figures))
    except AssertionError as exc:
        logs = "\n".join(
            f"--- {name}\n{stack.log_tail(name, 30)}" for name in (*cluster.workers, "livekit-a", "livekit-b")
        )
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for kiosk in [*(k for k, node in kiosks.values() if node is cluster.node_b), *reconnected]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kiosk.leave(), 10)
