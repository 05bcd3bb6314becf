"""Shared fixtures: the real local stack (PostgreSQL, Redis, LiveKit) and our own services.

Everything runs on loopback, on free ports, in temporary directories, and is stopped at the
end of the test session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from jarvis.migrate import migrate
from jarvis_local.stack import LocalStack, local_stack

os.environ.setdefault("NO_TORCH_COMPILE", "1")

LYON_KEY = "demo-key-lyon-part-dieu"
BORDEAUX_KEY = "demo-key-bordeaux-chartrons"
LYON_GYM_ID = "11111111-1111-4111-8111-111111111111"
BORDEAUX_GYM_ID = "22222222-2222-4222-8222-222222222222"
CAMILLE = {"badge_id": "LYON-0001", "member_id": "c1111111-0000-4000-8000-000000000001"}


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """PostgreSQL (migrated, demo data loaded), Redis and the LiveKit server."""
    with local_stack() as s:
        asyncio.run(migrate(s.pg_dsn, seed_demo=True))
        yield s


@pytest.fixture(scope="session")
def token_service_url(stack: LocalStack) -> str:
    """The real token service, as a process, against the stack."""
    return stack.start_token_service()


@pytest.fixture(scope="session")
def agent_worker(stack: LocalStack) -> LocalStack:
    """One JARVIS worker registered with the LiveKit server."""
    stack.start_agent_worker({"JARVIS_NUM_IDLE_PROCESSES": "1", "JARVIS_SPEECH__MODE": "text"})
    return stack
