"""``python -m token_service``: serve the token API (settings from JARVIS_* / LIVEKIT_* env)."""

from __future__ import annotations

import logging

import uvicorn

from token_service.app import create_app
from token_service.settings import TokenServiceSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = TokenServiceSettings()
    if settings.token_workers > 1:
        # uvicorn's supervisor: each worker builds its own app from the same environment.
        uvicorn.run("token_service.app:create_app", factory=True, workers=settings.token_workers, host=settings.host,
                    port=settings.port, access_log=False, log_level="warning")
        return
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
