"""The worker's engine load: replica states from health answers, and the load they make."""

from __future__ import annotations

import httpx

from agent.engine_load import EngineWatch, Replica, engine_load, health_url, replica_from_health


def test_health_url_from_a_plugin_address() -> None:
    assert health_url("ws://10.0.0.5:8088") == "http://10.0.0.5:8088/api/health"
    assert health_url("wss://gpu-1.example/") == "https://gpu-1.example/api/health"


def test_replica_states() -> None:
    assert replica_from_health("u", 200, {"streams_in_use": 1, "max_streams": 4}) == Replica("u", "ok", 1, 4)
    assert replica_from_health("u", 200, {"streams_in_use": 4, "max_streams": 4}).state == "full"
    assert replica_from_health("u", 503, {"status": "draining"}).state == "draining"
    assert replica_from_health("u", 503, {"status": "engine stopped"}).state == "down"
    assert replica_from_health("u", None, None).state == "down"


def test_load_is_full_when_every_replica_of_one_engine_is_unusable() -> None:
    ok = Replica("a", "ok", 1, 4)
    for unusable in ("full", "draining", "down"):
        stt = [Replica("s1", unusable, 4, 4), Replica("s2", "down")]  # type: ignore[arg-type]
        assert engine_load({"stt": stt, "tts": [ok]}) == 1.0
    # One replica with room is enough; the fill counts the replicas that answer.
    stt = [Replica("s1", "full", 4, 4), Replica("s2", "ok", 0, 4), Replica("s3", "draining")]
    assert engine_load({"stt": stt, "tts": [ok]}) == 0.5
    assert engine_load({"stt": [ok], "tts": [Replica("t", "ok", 3, 4)]}) == 0.75


async def test_the_watch_reads_every_replica() -> None:
    answers = {
        "stt-1": httpx.Response(200, json={"status": "ok", "streams_in_use": 2, "max_streams": 2}),
        "stt-2": httpx.Response(503, json={"status": "draining"}),
        "tts-1": httpx.Response(200, json={"status": "ok", "streams_in_use": 0, "max_streams": 2}),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host not in answers:
            raise httpx.ConnectError("refused", request=request)
        return answers[request.url.host]

    watch = EngineWatch({"stt": ["ws://stt-1:1", "ws://stt-2:1"], "tts": ["ws://tts-1:1", "ws://tts-2:1"]})
    assert watch.load() is None  # nothing polled yet: the session load alone counts
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await watch.poll(client)
    assert watch.load() == 1.0  # stt-1 full, stt-2 draining
    answers["stt-2"] = httpx.Response(200, json={"status": "ok", "streams_in_use": 1, "max_streams": 2})
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await watch.poll(client)
    assert watch.load() == 0.75  # tts-2 down does not count; stt 3 of 4 slots


async def test_a_busy_engine_that_answers_health_late_keeps_its_last_state() -> None:
    slow = False

    def answer(request: httpx.Request) -> httpx.Response:
        if slow:
            raise httpx.ReadTimeout("health answered late", request=request)
        return httpx.Response(200, json={"status": "ok", "streams_in_use": 1, "max_streams": 2})

    watch = EngineWatch({"stt": ["ws://stt-1:1"], "tts": ["ws://tts-1:1"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await watch.poll(client)
        assert watch.load() == 0.5
        slow = True  # the engine is stepping a full batch: its health route answers after the timeout
        await watch.poll(client)
    assert watch.load() == 0.5, "a late health answer is not an engine down: the worker must keep taking jobs"
