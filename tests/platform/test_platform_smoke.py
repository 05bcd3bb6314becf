import httpx

from jarvis_local.stack import LocalStack
from tests.conftest import CAMILLE, LYON_KEY


def test_token_service_issues_a_session(stack: LocalStack, token_service_url: str) -> None:
    r = httpx.post(f"{token_service_url}/v1/sessions", json={"badge_id": CAMILLE["badge_id"], "kiosk_id": "accueil-1"},
                   headers={"Authorization": f"Bearer {LYON_KEY}"})
    assert r.status_code == 201, r.text
    assert r.json()["member_first_name"] == "Camille"
