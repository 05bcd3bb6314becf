"""The gym tools on the real PostgreSQL, called as the LLM would call them: tolerant video
search, kiosk failures, member statistics, gym info, and tenant isolation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from agent.tools import TOOL_SPECS, GymTools, SessionIds, ToolFailure, tool_json_schema
from tests.brain.conftest import BORDEAUX, CAMILLE, LEA, LYON, NADIA, THOMAS, KioskOnLiveKit, next_weekday_at

pytestmark = pytest.mark.integration


class RecordingKiosk:
    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.shown: list[tuple[str, str]] = []

    async def show_video(self, url: str, title: str) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.shown.append((url, title))
        return self.answer


def tools_for(pool: Any, gym_id: str, member_id: str, kiosk: Any = None) -> GymTools:
    return GymTools(pool, SessionIds(gym_id, member_id, str(uuid.uuid4())), kiosk=kiosk)


@pytest.mark.parametrize(
    ("said", "slug"),
    [
        ("développé couché", "developpe-couche"),
        ("developpe-couche", "developpe-couche"),
        ("bench press", "developpe-couche"),
        ("Le Développé-Couché", "developpe-couche"),
        ("squats", "squat"),
        ("traction", "tractions"),
        ("deadlift", "souleve-de-terre"),
        ("soulevé de terre", "souleve-de-terre"),
        ("fente avant", "fentes"),
    ],
)
async def test_video_search_tolerates_how_members_say_it(pool: Any, said: str, slug: str) -> None:
    kiosk = RecordingKiosk()
    answer = await tools_for(pool, LYON, CAMILLE, kiosk).call("display_video_tutorial", {"exercise": said})
    assert answer.endswith("est affichée sur l'écran de la borne.")
    assert kiosk.shown[0][0] == f"/videos/energie-lyon-part-dieu/{slug}.mp4"


async def test_unknown_exercise_is_reported_with_what_exists(pool: Any) -> None:
    kiosk = RecordingKiosk()
    with pytest.raises(ToolFailure) as failure:
        await tools_for(pool, LYON, CAMILLE, kiosk).call("display_video_tutorial", {"exercise": "yoga nidra"})
    assert "pas de vidéo pour « yoga nidra »" in failure.value.message and "le squat" in failure.value.message
    assert kiosk.shown == []


@pytest.mark.parametrize("answer", [False, TimeoutError("rpc timeout")], ids=["refused", "timeout"])
async def test_kiosk_that_does_not_answer_is_reported(pool: Any, answer: Any) -> None:
    with pytest.raises(ToolFailure, match="l'écran de la borne n'a pas répondu"):
        await tools_for(pool, LYON, CAMILLE, RecordingKiosk(answer)).call(
            "display_video_tutorial", {"exercise": "squat"}
        )


async def test_kiosk_without_the_video_method_on_livekit_is_reported(
    pool: Any, kiosk_on_livekit: KioskOnLiveKit
) -> None:
    kiosk_on_livekit.kiosk_room.local_participant.unregister_rpc_method("kiosk.show_video")
    with pytest.raises(ToolFailure, match="l'écran de la borne n'a pas répondu"):
        await tools_for(pool, LYON, CAMILLE, kiosk_on_livekit.kiosk).call(
            "display_video_tutorial", {"exercise": "squat"}
        )


async def test_member_stats_in_spoken_french(pool: Any) -> None:
    camille = await tools_for(pool, LYON, CAMILLE).call("get_member_stats", {})
    # Camille came every other day for sixty days.
    assert camille.startswith("Statistiques : quinze visites ces trente derniers jours")
    assert "environ trois fois et demie par semaine" in camille
    assert "venu chaque semaine depuis" in camille
    nadia = await tools_for(pool, LYON, NADIA).call("get_member_stats", {})
    assert nadia.startswith("Aucune visite enregistrée")


async def test_gym_info_answers_from_the_gyms_own_data(pool: Any) -> None:
    lyon = tools_for(pool, LYON, CAMILLE)
    assert "vingt-neuf euros quatre-vingt-dix" in await lyon.call("get_gym_info", {"topic": "tarifs"})
    assert "12 rue Garibaldi" in await lyon.call("get_gym_info", {"topic": "adresse"})
    hours = await lyon.call("get_gym_info", {"topic": "horaires"})
    assert "dimanche de neuf heures à treize heures" in hours
    with pytest.raises(ToolFailure, match="rien n'a été fait"):
        await lyon.call("get_gym_info", {"topic": "parking"})


def test_tool_schemas_are_french_and_never_take_ids() -> None:
    for spec in TOOL_SPECS:
        schema = tool_json_schema(spec)
        assert schema["additionalProperties"] is False
        assert not {"gym_id", "member_id", "session_id", "gym_slug"} & set(schema["properties"])
        for prop in schema["properties"].values():
            assert prop.get("description"), (spec.name, prop)
    assert set(tool_json_schema(TOOL_SPECS[2])["properties"]) == {"datetime", "coach"}


TENANT_TABLES = ("bookings", "coach_requests", "churn_flags", "missions")


async def gym_row_counts(pool: Any, gym_id: str) -> dict[str, int]:
    async with pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t} WHERE gym_id = $1", gym_id) for t in TENANT_TABLES}


async def test_a_bordeaux_session_never_reads_or_writes_lyon_rows(pool: Any) -> None:
    lyon_before = await gym_row_counts(pool, LYON)
    bordeaux_before = await gym_row_counts(pool, BORDEAUX)
    kiosk = RecordingKiosk()
    lea = tools_for(pool, BORDEAUX, LEA, kiosk)
    tuesday_11 = next_weekday_at(1, 11).isoformat(timespec="minutes")

    await lea.call("display_video_tutorial", {"exercise": "squat"})
    assert kiosk.shown[0][0] == "/videos/atlas-bordeaux-chartrons/squat.mp4"
    assert "trente-quatre euros quatre-vingt-dix" in await lea.call("get_gym_info", {"topic": "tarifs"})
    assert "Inès" in await lea.call("contact_coach", {"message": "Question sur le semi-marathon"})
    with pytest.raises(ToolFailure, match="pas de coach nommé Karim"):  # Lyon's coach does not exist here
        await lea.call("book_session", {"datetime": tuesday_11, "coach": "Karim"})
    assert "avec Inès" in await lea.call("book_session", {"datetime": tuesday_11})  # her own coach
    await lea.call("log_churn_risk", {"reason": "Trouve l'abonnement trop cher", "severity": "medium"})
    await lea.call("create_mission", {"title": "Sac de frappe décroché"})

    assert await gym_row_counts(pool, LYON) == lyon_before
    after = await gym_row_counts(pool, BORDEAUX)
    assert {t: after[t] - bordeaux_before[t] for t in TENANT_TABLES} == {
        "bookings": 1, "coach_requests": 1, "churn_flags": 1, "missions": 1,
    }  # fmt: skip


async def test_a_session_whose_member_is_not_in_its_gym_is_refused(pool: Any) -> None:
    """Ids come from the session; should they ever disagree, no tool acts."""
    before = await gym_row_counts(pool, BORDEAUX)
    forged = tools_for(pool, BORDEAUX, CAMILLE, RecordingKiosk())
    for name, args in [
        ("contact_coach", {"message": "test"}),
        ("log_churn_risk", {"reason": "test", "severity": "low"}),
        ("create_mission", {"title": "test mission"}),
        ("get_member_stats", {}),
    ]:
        with pytest.raises(ToolFailure, match="Je ne peux rien faire"):
            await forged.call(name, args)
    assert await gym_row_counts(pool, BORDEAUX) == before


async def test_two_kiosks_booking_the_same_coach_hour_get_one_booking(pool: Any) -> None:
    """Camille and Thomas ask for Karim at the same hour from two kiosks: one gets it."""
    slot = next_weekday_at(4, 9).isoformat(timespec="minutes")  # Friday 9 h: Karim works 9 h to 18 h
    attempts = [
        tools_for(pool, LYON, member).call("book_session", {"datetime": slot, "coach": "Karim"})
        for member in (CAMILLE, THOMAS)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    booked = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, ToolFailure)]
    assert len(booked) == 1 and booked[0].startswith("C'est réservé : séance avec Karim")
    assert len(refused) == 1 and "Karim a déjà une séance" in refused[0].message
