"""Shared fixtures: the real local stack (PostgreSQL, Redis, LiveKit) and our own services.

Everything runs on loopback, on free ports, in temporary directories. The stack's own services
stop at the end of the test session; the engines, workers and token services a module starts on it
stop with that module.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from jarvis.migrate import migrate
from jarvis_local.stack import LocalStack, local_stack

os.environ.setdefault("NO_TORCH_COMPILE", "1")

# CI sets this (.ci/run): a test that cannot run there (no Chromium, no espeak-ng) would
# otherwise pass CI as a quiet "s" while proving nothing.
REQUIRE_ALL = os.environ.get("JARVIS_REQUIRE_ALL") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """A test's tool is missing: skip it on a developer's machine, fail it where every test must run."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (JARVIS_REQUIRE_ALL=1: every test must run here)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(available, reason): skip_or_fail(reason) unless `available` is true")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: a missing tool must not start the stack only to skip afterwards.
    for mark in item.iter_markers(name="requires"):
        available, reason = mark.args[0], mark.kwargs.get("reason") or mark.args[1]
        if not available:
            skip_or_fail(reason)


LYON_KEY = "demo-key-lyon-part-dieu"
BORDEAUX_KEY = "demo-key-bordeaux-chartrons"
LYON_GYM_ID = "11111111-1111-4111-8111-111111111111"
BORDEAUX_GYM_ID = "22222222-2222-4222-8222-222222222222"
CAMILLE = {"badge_id": "LYON-0001", "member_id": "c1111111-0000-4000-8000-000000000001"}


# The session's stack once a test asked for it (module_processes_stopped reads it).
SESSION_STACKS: list[LocalStack] = []


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """PostgreSQL (migrated, demo data loaded), Redis and the LiveKit server."""
    with local_stack() as s:
        asyncio.run(migrate(s.pg_dsn, seed_demo=True))
        # Session logs built in this process (tests/brain) spool where the stack's workers do.
        os.environ["JARVIS_SESSION_LOG__SPOOL_DIR"] = s.env()["JARVIS_SESSION_LOG__SPOOL_DIR"]
        SESSION_STACKS.append(s)
        try:
            yield s
        finally:
            SESSION_STACKS.remove(s)


@pytest.fixture(scope="module", autouse=True)
def module_processes_stopped() -> Iterator[None]:
    """The engines, workers and token services a module started on the session's stack stop with it.
    Left running, a CI run ended with every module's engines and idle job processes still loading
    its two cores, and the later tests' latencies grew with them."""
    before = SESSION_STACKS[0].running() if SESSION_STACKS else set()
    yield
    for s in SESSION_STACKS:
        stopped = s.stop_started_since(before)
        if stopped:
            logging.getLogger("tests").info("stopped with the module: %s", ", ".join(stopped))


@pytest.fixture(scope="session")
def token_service_url(stack: LocalStack) -> str:
    """The real token service, as a process, against the stack."""
    with stack.lasting():
        return stack.start_token_service()


# The session-wide worker's wait for a dropped kiosk (15 s in production): shorter, so a test
# can outlast it.
KIOSK_REJOIN_GRACE_S = 5.0


@pytest.fixture(scope="session")
def agent_worker(stack: LocalStack) -> LocalStack:
    """One JARVIS worker registered with the LiveKit server."""
    with stack.lasting():
        stack.start_agent_worker({
            "JARVIS_NUM_IDLE_PROCESSES": "1", "JARVIS_SPEECH__MODE": "text",
            "JARVIS_KIOSK_REJOIN_GRACE_S": str(KIOSK_REJOIN_GRACE_S),
        })  # fmt: skip
    return stack
