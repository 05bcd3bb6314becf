"""The plugins' side of a Kyutai engine connection: connecting, and what an engine's error means.

Both plugins map errors the same way, as LiveKit's retry loop expects: a client-caused error is a
non-retryable 4xx, an engine-side failure a retryable 5xx, a full engine a retryable 503.
"""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError
from livekit.agents.types import NotGivenOr
from livekit.agents.utils import is_given
from websockets.asyncio.client import ClientConnection

from .protocol import API_KEY_HEADER, CLOSE_CLIENT_ERROR, CLOSE_FULL, NO_FREE_CHANNELS
from .settings import PluginSettingsBase

# After an Error the engine closes the stream at once; its close code tells whose fault it was.
CLOSE_WAIT_S = 1.0


def endpoint(url: NotGivenOr[str], api_key: NotGivenOr[str], settings: PluginSettingsBase) -> tuple[str, str]:
    """The engine's address and key: as given, else from the plugin's settings."""
    resolved = url if is_given(url) else settings.url
    if not resolved.startswith(("ws://", "wss://")):
        raise ValueError(f"url must be a ws:// or wss:// address of a Kyutai engine server, got {resolved!r}")
    return resolved.rstrip("/"), api_key if is_given(api_key) else settings.api_key


class KyutaiProvider:
    """Mixed into both plugins: the provider LiveKit's metrics and logs report."""

    @property
    def provider(self) -> str:
        return "kyutai"


async def connect(
    url: str, api_key: str, timeout_s: float, *, engine: str, request_id: str | None = None, max_size: int = 2**20
) -> ClientConnection:
    """Open one stream, within `timeout_s` (LiveKit's `APIConnectOptions.timeout`)."""
    address = url.split("?")[0]
    try:
        async with asyncio.timeout(timeout_s):
            return await websockets.connect(
                url, additional_headers={API_KEY_HEADER: api_key}, open_timeout=None, max_size=max_size
            )
    except TimeoutError as exc:
        raise APITimeoutError(f"{engine} at {address} did not answer in {timeout_s} s") from exc
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        raise APIStatusError(
            f"{engine} refused the stream (HTTP {status})", status_code=status, request_id=request_id
        ) from exc
    except (OSError, websockets.WebSocketException) as exc:
        raise APIConnectionError(f"{engine} unreachable at {address}: {exc}") from exc


def engine_error(engine: str, message: str, close_code: int | None, request_id: str | None = None) -> APIStatusError:
    """An engine's `Error {message}` (and the close code after it) as LiveKit's error."""
    if close_code == CLOSE_FULL or NO_FREE_CHANNELS in message:
        return APIStatusError(
            f"{engine} is full ({message})", status_code=503, request_id=request_id, retryable=True
        )
    if close_code == CLOSE_CLIENT_ERROR:
        return APIStatusError(
            f"{engine} rejected the stream: {message}", status_code=400, request_id=request_id, retryable=False
        )
    # An engine failure, or a server that does not tell (Kyutai's moshi-server): worth another try.
    return APIStatusError(f"{engine} error: {message}", status_code=500, request_id=request_id, retryable=True)


async def received_error(
    ws: ClientConnection, engine: str, message: str, request_id: str | None = None
) -> APIStatusError:
    """`engine_error` once the engine has closed the stream that carried the Error."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), CLOSE_WAIT_S)
    return engine_error(engine, message, ws.close_code, request_id)
