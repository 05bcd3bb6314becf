"""An idle job process warms up before any kiosk waits on it: a member's session then finds the
speech plugins imported, its LLM client built (TLS context and all) and the word splitter's
tables loaded, all out of the garbage collector's reach, instead of doing it on the session's
event loop while the member waits (livekit-agents' loop monitor measured ~1 s of it, Dec 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import REPO

PROBE = """
import gc, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from livekit.agents import JobExecutorType, JobProcess
from agent.worker import PREWARMED_LLM, prewarm
proc = JobProcess(executor_type=JobExecutorType.PROCESS, user_arguments=None, http_proxy=None)
before = set(sys.modules)
prewarm(proc)
prewarm(proc)  # a second call (a thread executor's next job) neither collects nor freezes again
llm = proc.userdata.get(PREWARMED_LLM)
print(json.dumps({
    "imported": sorted(m for m in ("kyutai_stt.stt", "kyutai_tts.tts", "anyio._backends._asyncio",
                                   "httpcore._async", "httpcore._backends.anyio", "openai.pagination")
                       if m in sys.modules),
    "loaded_by_prewarm": "kyutai_stt.stt" not in before,
    "health_tls": __import__("kyutai_common.client").client.health_tls.cache_info().currsize,
    "llm": type(llm).__module__ + "." + type(llm).__name__ if llm else None,
    "frozen": gc.get_freeze_count(),
    "torch": "torch" in sys.modules,
}))
"""


def run_prewarm(**env: str) -> tuple[dict[str, object], str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JARVIS_", "GROQ_"))}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**clean, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_an_idle_job_process_is_ready_for_a_member_before_the_kiosk_joins() -> None:
    ready, log = run_prewarm(
        JARVIS_LLM__PRIMARY__PROVIDER="vllm", JARVIS_LLM__PRIMARY__MODEL="jarvis-fr",
        JARVIS_LLM__PRIMARY__BASE_URL="http://127.0.0.1:9/v1",
    )
    assert ready["imported"] == ["anyio._backends._asyncio", "httpcore._async", "httpcore._backends.anyio",
                                 "kyutai_stt.stt", "kyutai_tts.tts", "openai.pagination"]
    assert ready["loaded_by_prewarm"] is True and ready["health_tls"] == 1
    assert ready["llm"] == "livekit.plugins.openai.llm.LLM"
    assert isinstance(ready["frozen"], int) and ready["frozen"] > 10_000
    assert log.count("startup objects out of the garbage collector") == 1, log
    assert "garbage collection of generation" not in log, log  # the freeze's own collection is not reported
    assert ready["torch"] is False  # the engines hold the models; a session's process never loads torch


def test_a_misconfigured_llm_does_not_stop_the_process_warming_up() -> None:
    # vLLM without its URL: the session logs what is wrong (start_conversation), the process still serves.
    ready, _ = run_prewarm(JARVIS_LLM__PRIMARY__PROVIDER="vllm", JARVIS_LLM__PRIMARY__MODEL="jarvis-fr")
    assert ready["llm"] is None and ready["frozen"]
