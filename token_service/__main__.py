"""``python -m token_service``: serve the token API (settings from JARVIS_* / LIVEKIT_* env)."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI
from kyutai_common.runtime import freeze_startup_objects, log_slow_collections

from token_service.app import create_app
from token_service.settings import TokenServiceSettings

logger = logging.getLogger("token_service")


def configure_logging() -> None:
    """Once per process (uvicorn's worker processes import `served_app` afresh)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def served_app(settings: TokenServiceSettings | None = None) -> FastAPI:
    """The app of one serving process. A full garbage collection of the ~100 k objects of its
    imports held every request for 55-70 ms: they are frozen out of the collector's reach."""
    configure_logging()
    app = create_app(settings)
    freeze_startup_objects(logger)
    log_slow_collections(logger)
    return app


def main() -> None:
    configure_logging()
    settings = TokenServiceSettings()
    if settings.token_workers > 1:
        # uvicorn's supervisor: each worker builds its own app from the same environment.
        uvicorn.run("token_service.__main__:served_app", factory=True, workers=settings.token_workers,
                    host=settings.host, port=settings.port, access_log=False, log_level="warning")
        return
    uvicorn.run(served_app(settings), host=settings.host, port=settings.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
