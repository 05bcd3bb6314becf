"""bench.voice_loop --profile: where a worker's CPU goes, per thread (/proc) and per Python function (py-spy stacks)."""

from __future__ import annotations

import os
import threading
import time

from bench.profile import summarise_stacks, thread_cpu, thread_groups

RAW = "\n".join([
    'process 1:"python -m agent start";run (asyncio/base_events.py:607);select (selectors.py:468);'
    "EpollSelector.select (selectors.py:468) 40",
    'process 1:"python -m agent start";_forward_task (agents/voice/room_io/_input.py:487);'
    "FfiClient.request (rtc/_ffi_client.py:307) 30",
    'process 1:"python -m agent start";_send (kyutai_stt/stt.py:400);'
    "PerMessageDeflate.encode (websockets/extensions/permessage_deflate.py:192) 30",
    "not a stack line",
])


def test_a_busy_thread_is_seen_with_its_cpu_and_charged_to_its_name() -> None:
    stop = threading.Event()
    native_ids: list[int] = []

    def spin() -> None:
        native_ids.append(threading.get_native_id())
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    before = thread_cpu(os.getpid())
    t0 = time.perf_counter()
    worker.start()
    time.sleep(0.5)
    after = thread_cpu(os.getpid())
    stop.set()
    worker.join()
    name, cpu_s = after[(os.getpid(), native_ids[0])]
    assert cpu_s > 0.1, after  # it spun for half a second
    groups = thread_groups(before, after, time.perf_counter() - t0)
    assert groups[name] > 20, groups  # the kernel's name for the thread (Python 3.11 keeps the process's)


def test_stacks_split_waiting_from_work_and_charge_work_to_packages() -> None:
    summary = summarise_stacks(RAW)
    assert summary["samples"] == 100
    assert summary["waiting_pct"] == 40.0
    assert summary["own_pct"] == {
        "FfiClient.request (rtc/_ffi_client.py:307)": 50.0,
        "PerMessageDeflate.encode (websockets/extensions/permessage_deflate.py:192)": 50.0,
    }
    assert summary["under_pct"]["livekit-agents"] == 50.0
    assert summary["under_pct"]["kyutai_stt plugin"] == 50.0
    assert summary["under_pct"]["websockets"] == 50.0
