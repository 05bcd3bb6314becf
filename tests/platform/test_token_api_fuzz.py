"""Fuzzing the token API from its own OpenAPI spec: whatever a client sends, never a 500."""

from __future__ import annotations

import asyncio
import itertools

import schemathesis
from hypothesis import HealthCheck, given, settings

from jarvis_local.stack import LocalStack
from tests.platform.gym_factory import create_gym


def test_no_request_makes_the_token_service_fail(stack: LocalStack, token_service_url: str) -> None:
    # Its own gym, with a limit high enough that fuzzing never starves the other tests.
    fuzz_key = asyncio.run(create_gym(stack.pg_dsn, rate_limit_per_minute=100_000)).api_key
    schema = schemathesis.openapi.from_url(f"{token_service_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/sessions" for op in operations)
    seen: dict[int, int] = {}

    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):
        if mode is schemathesis.GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to get wrong in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            for headers in ({}, {"Authorization": f"Bearer {fuzz_key}"}):
                response = case.call(headers=headers)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500 or response.status_code == 503, (
                    f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}"
                )
                assert "Traceback" not in response.text

        call()
    print(f"\nfuzzed status codes: {dict(sorted(seen.items()))}")
    assert 422 in seen and 401 in seen
