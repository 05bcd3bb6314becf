"""The way back, in the browser: the kiosk page moves the member to the chain's previous voice
provider (a stand-in on loopback speaking the OpenAI Realtime protocol, kiosk/src/openai-realtime.ts)
when the real token service says JARVIS is off for this kiosk (`jarvis_disabled`, set through its
rollout admin route), and when no agent joined the room within the bound (`agentTimeoutMs`).
Debian's Chromium, fake microphone, the real LiveKit server, token service, PostgreSQL and Redis.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jarvis_local.browser import (
    CHROMIUM,
    LEGACY_VOICE_RMS,
    LegacyProviderStandIn,
    demo_server,
    ensure_kiosk_built,
    french_wav,
    run_scenario,
    session_for_page,
)
from jarvis_local.stack import LocalStack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.requires(CHROMIUM.exists(), reason="Debian's Chromium is not installed (/usr/bin/chromium)"),
]

LYON_GYM = "11111111-1111-4111-8111-111111111111"
SEED_MODEL = "gpt-4o-mini-realtime-preview"  # the chain's app today (the seed's voiceConfig.ts)
AGENT_BOUND_MS = 3000  # the page's agentTimeoutMs here (8 s is the Next.js example's)


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_kiosk_built()
    folder = tmp_path_factory.mktemp("fallback-wav")
    return french_wav(folder / "question.wav", "Bonjour, à quelle heure ferme la salle ce soir ?", tail_silence_s=2)


@pytest.fixture
async def legacy() -> AsyncIterator[LegacyProviderStandIn]:
    provider = LegacyProviderStandIn()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(scope="module")
def rollout_admin(stack: LocalStack) -> Iterator[tuple[str, str]]:
    """A token service of our own with its rollout admin route on: (its URL, the admin key)."""
    key = secrets.token_urlsafe(16)
    yield stack.start_token_service({"JARVIS_ADMIN_API_KEY": key}), key


def assert_moved_to_legacy(result: dict[str, Any], legacy: LegacyProviderStandIn, reason: str) -> None:
    assert result["ok"], (
        f"{result.get('error')} at {result.get('current_step')}; states={result.get('states')} "
        f"message={result.get('message_code')} kiosk_logs={result.get('kiosk_logs')} stderr={result.get('stderr')}"
    )
    assert result["page_errors"] == [], result["page_errors"]
    assert [f["reason"] for f in result["fallbacks"]] == [reason]
    assert result["in_legacy"]["provider"] == "legacy"
    assert result["in_legacy"]["message_code"] is None, "the member is not shown an error: they just talk"
    # The gym backend asked the provider for a secret with its own key and the chain's settings …
    assert len(legacy.sessions) == 1 and legacy.sessions[0]["model"] == SEED_MODEL, legacy.sessions
    assert legacy.sessions[0]["input_audio_format"] == "pcm16"
    # … and the kiosk, with that secret only, streamed the member's voice and played the answer.
    assert legacy.models == [SEED_MODEL] and legacy.refused == 0
    assert legacy.heard_s >= 1.0, legacy.heard_s
    assert legacy.heard_peak_rms > LEGACY_VOICE_RMS, "the fake microphone's French question reached the old provider"
    assert result["in_legacy"]["legacy_played_s"] >= 0.9
    assert result["state"] == "ended"


async def test_kiosk_uses_the_previous_provider_when_jarvis_is_off_for_it(
    rollout_admin: tuple[str, str], legacy: LegacyProviderStandIn, question: Path
) -> None:
    """Rollout flag off for this kiosk (admin route) → the token service answers jarvis_disabled →
    the page never joins a LiveKit room and the member talks with the previous provider."""
    token_url, admin_key = rollout_admin
    kiosk_id = f"borne-{uuid.uuid4().hex[:8]}"  # its own kiosk: no other test's sessions are affected
    flag = f"{token_url}/v1/admin/rollout/gyms/{LYON_GYM}/kiosks/{kiosk_id}"
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.put(flag, json={"mode": "off"}, headers=headers)
        assert answer.status_code == 200, answer.text
        try:
            with demo_server(token_url, JARVIS_DEMO_KIOSK_ID=kiosk_id, **legacy.demo_env) as url:
                result = await run_scenario({
                    "url": url,
                    "wav": str(question),
                    "steps": [
                        # The flag is read again every 0.5 s: by the time the page loads it is in force.
                        {"sleep": 1200},
                        {"click_badge": "LYON-0001"},
                        {"wait_fallback": "jarvis_disabled"},
                        {"wait_state": ["legacy"]},
                        {"wait_legacy_audio": 0.9, "timeoutMs": 30_000},
                        {"save_diagnostics": "in_legacy"},
                        {"end": True},
                    ],
                })
        finally:
            await client.delete(flag, headers=headers)
    assert_moved_to_legacy(result, legacy, "jarvis_disabled")
    assert not {"connecting", "waiting_agent"} & {s["state"] for s in result["states"]}, "no room was joined"


async def test_kiosk_uses_the_previous_provider_when_no_agent_comes(
    stack: LocalStack, token_service_url: str, legacy: LegacyProviderStandIn, question: Path
) -> None:
    """A session whose room no agent joins → after the bound the kiosk leaves the room and the
    member talks with the previous provider instead of reading "JARVIS ne répond pas"."""
    room = f"browser-{uuid.uuid4().hex[:8]}"  # nobody dispatches an agent to this room
    with demo_server(token_service_url, **legacy.demo_env) as url:
        result = await run_scenario({
            "url": f"{url}?agentTimeoutMs={AGENT_BOUND_MS}",
            "wav": str(question),
            "sessionOverride": session_for_page(stack, room),
            "steps": [
                {"click_badge": "LYON-0001"},
                {"wait_state": ["waiting_agent"]},
                {"wait_fallback": "agent_absent"},
                {"wait_legacy_audio": 0.9, "timeoutMs": 30_000},
                {"save_diagnostics": "in_legacy"},
                {"end": True},
            ],
        })
    assert_moved_to_legacy(result, legacy, "agent_absent")
    waited = next(s["t"] for s in result["states"] if s["state"] == "waiting_agent")
    moved = result["fallbacks"][0]["t"]
    # The bound, measured in the page: never early; late only by timer and event-loop slack.
    assert AGENT_BOUND_MS <= moved - waited < AGENT_BOUND_MS + 3000, moved - waited  # a loaded CI box delays timers
    print(f"\nno agent: waited {moved - waited:.0f} ms (bound {AGENT_BOUND_MS} ms) before the previous provider")


async def test_kiosk_uses_the_previous_provider_when_jarvis_is_full(
    token_service_url: str, legacy: LegacyProviderStandIn, question: Path
) -> None:
    """The gym backend passes on the token service's 503 over_capacity (admission control) →
    the page goes straight to the previous provider rather than showing "indisponible"."""
    over_capacity = {"status": 503, "body": {"code": "over_capacity", "detail": "every JARVIS worker is busy"}}
    with demo_server(token_service_url, **legacy.demo_env) as url:
        result = await run_scenario({
            "url": url,
            "wav": str(question),
            "sessionOverride": over_capacity,
            "steps": [
                {"click_badge": "LYON-0001"},
                {"wait_fallback": "over_capacity"},
                {"wait_legacy_audio": 0.9, "timeoutMs": 30_000},
                {"save_diagnostics": "in_legacy"},
                {"end": True},
            ],
        })
    assert_moved_to_legacy(result, legacy, "over_capacity")
