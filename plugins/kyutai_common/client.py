"""The plugins' side of a Kyutai engine connection: connecting, and what an engine's error means.

Both plugins map errors the same way, as LiveKit's retry loop expects: a client-caused error is a
non-retryable 4xx, an engine-side failure a retryable 5xx, a full engine a retryable 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx
import websockets
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError, APITimeoutError
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .protocol import API_KEY_HEADER, CLOSE_CLIENT_ERROR, CLOSE_FULL, CLOSE_RESTART, NO_FREE_CHANNELS, http_url
from .settings import PluginSettingsBase

# After an Error the engine closes the stream at once; its close code tells whose fault it was.
CLOSE_WAIT_S = 1.0
# A replica's health is read at most this often per plugin instance (every new stream would
# otherwise cost one HTTP round trip per replica), and must answer within HEALTH_TIMEOUT_S.
HEALTH_TTL_S = 1.0
HEALTH_TIMEOUT_S = 0.5

logger = logging.getLogger("kyutai.replicas")
T = TypeVar("T")


@functools.cache
def health_tls() -> ssl.SSLContext:
    """One TLS context for every health read: httpx builds a new one (loading the CA bundle) per
    client otherwise, 0.3-0.5 s of CPU on a loaded host, inside the failover's 500 ms."""
    return httpx.create_ssl_context()


def endpoint(url: NotGivenOr[str], api_key: NotGivenOr[str], settings: PluginSettingsBase) -> tuple[str, str]:
    """The engine's address and key: as given, else from the plugin's settings."""
    urls, key = endpoints(url, NOT_GIVEN, api_key, settings)
    return urls[0], key


def endpoints(
    url: NotGivenOr[str], urls: NotGivenOr[Sequence[str]], api_key: NotGivenOr[str], settings: PluginSettingsBase
) -> tuple[list[str], str]:
    """The engine replicas' addresses and key: as given (`url` is a list of one), else from settings."""
    if is_given(url) and is_given(urls):
        raise ValueError("give url or urls, not both")
    resolved = [url] if is_given(url) else list(urls) if is_given(urls) else settings.replica_urls()
    if not resolved:
        raise ValueError("no Kyutai engine url given")
    for address in resolved:
        if not address.startswith(("ws://", "wss://")):
            raise ValueError(f"url must be a ws:// or wss:// address of a Kyutai engine server, got {address!r}")
    return [address.rstrip("/") for address in resolved], api_key if is_given(api_key) else settings.api_key


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
            # No permessage-deflate: compressing every 80 ms of PCM took 13% of a worker's Python
            # time (bench.voice_loop --profile) and saves almost nothing on audio.
            return await websockets.connect(
                url, additional_headers={API_KEY_HEADER: api_key}, open_timeout=None, max_size=max_size,
                compression=None,
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
        return APIStatusError(f"{engine} is full ({message})", status_code=503, request_id=request_id, retryable=True)
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


class EngineHandOver(APIStatusError):
    """A draining engine ended the stream at a clean point (CLOSE_RESTART): carry on on another
    replica now. Not a failure: it neither counts against the stream's failovers nor logs a warning."""

    def __init__(self, engine: str, request_id: str | None = None) -> None:
        super().__init__(
            f"{engine} is restarting: stream handed over", status_code=503, request_id=request_id, retryable=True
        )


def closed_error(engine: str, exc: ConnectionClosed, request_id: str | None = None) -> APIError:
    """What the engine closing a live stream means: a hand-over when it is draining, else a lost link."""
    if exc.rcvd is not None and exc.rcvd.code == CLOSE_RESTART:
        return EngineHandOver(engine, request_id)
    return APIConnectionError(f"the {engine} closed the stream")


def can_fail_over(error: BaseException) -> bool:
    """An error another replica may not have: the engine is gone, failed or full (not the client's fault)."""
    if isinstance(error, APIStatusError):
        return error.retryable and error.status_code >= 500
    return isinstance(error, APIConnectionError)


def log_failover(engine: str, url: str, stream_id: str, reason: str) -> None:
    """One line per replica given up on: which, for which stream, why (never the words)."""
    logger.warning("%s failover: replica %s, stream %s: %s", engine, url, stream_id, reason)


@dataclass
class _Health:
    checked_at: float
    free: int  # free slots; 0 when full, draining or unreachable
    reason: str = ""  # why it is skipped


class ReplicaPool:
    """The engine replicas a plugin may stream to, picked client-side by free capacity.

    Each replica's GET /api/health (`streams_in_use`, `max_streams`, `status`) is read at most once
    per HEALTH_TTL_S; an unreachable, full or draining replica is skipped, the others are tried
    most free slots first. A replica that fails a stream is skipped until its health is read again.
    """

    def __init__(self, urls: Sequence[str], *, engine: str) -> None:
        self.urls = list(urls)
        self._engine = engine
        self._health: dict[str, _Health] = {}

    def __len__(self) -> int:
        return len(self.urls)

    def mark_down(self, url: str, reason: str) -> None:
        self._health[url] = _Health(time.monotonic(), 0, reason)

    async def ranked(self, *, refresh: bool = False) -> tuple[list[str], list[str]]:
        """(replicas to try, most free slots first; why each other one is skipped)."""
        now = time.monotonic()
        stale = [
            u for u in self.urls if refresh or u not in self._health or now - self._health[u].checked_at > HEALTH_TTL_S
        ]
        if stale:
            async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S, verify=health_tls()) as client:
                fresh = await asyncio.gather(*(self._read_health(client, u) for u in stale))
            self._health.update(zip(stale, fresh, strict=True))
        usable = [u for u in self.urls if self._health[u].free > 0]
        if not usable and not refresh and len(stale) < len(self.urls):
            # Every replica is known down or full: one fresh read before giving up (a restarted
            # replica is back before its cached failure expires).
            return await self.ranked(refresh=True)
        usable.sort(key=lambda u: -self._health[u].free)  # stable: ties keep the configured order
        skipped = [f"{u}: {self._health[u].reason}" for u in self.urls if self._health[u].free <= 0]
        return usable, skipped

    async def _read_health(self, client: httpx.AsyncClient, url: str) -> _Health:
        now = time.monotonic()
        try:
            response = await client.get(http_url(url, "/api/health"))
        except httpx.ConnectError:
            return _Health(now, 0, "unreachable")
        except httpx.HTTPError:
            return _Health(now, 1)  # slow to answer is not down: the stream's own timeout decides
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        status = str(body.get("status", "ok"))
        if response.status_code == 503 or status != "ok":
            return _Health(now, 0, f"{status} (HTTP {response.status_code})")  # draining, or its engine died
        if response.status_code != 200:
            return _Health(now, 1)  # not our health route (moshi-server): the stream itself will tell
        try:
            free = int(body["max_streams"]) - int(body["streams_in_use"])
        except (KeyError, TypeError, ValueError):
            return _Health(now, 1)
        return _Health(now, free, "" if free > 0 else "full")

    async def open(
        self,
        open_stream: Callable[[str], Awaitable[T]],
        conn_options: APIConnectOptions,
        *,
        stream_id: str,
        rounds: int = 1,
    ) -> tuple[str, T]:
        """Open a stream on the first replica that takes it; `rounds` passes over all of them,
        `conn_options.retry_interval` apart. Raises when none did: 503 when they were all full,
        else the last replica's error, else APIConnectionError (LiveKit's own retry loop may go on).
        """
        last: APIError | None = None
        for round_ in range(rounds):
            if round_:
                await asyncio.sleep(conn_options._interval_for_retry(round_ - 1))
            usable, _ = await self.ranked(refresh=round_ > 0)
            for url in usable:
                try:
                    opened = await open_stream(url)
                except APIError as exc:
                    if not can_fail_over(exc):
                        raise
                    last = exc
                    full = isinstance(exc, APIStatusError) and exc.status_code == 503
                    self.mark_down(url, "full" if full else type(exc).__name__)
                    log_failover(self._engine, url, stream_id, f"open failed: {exc}")
                    continue
                self._health[url].free -= 1  # until the next health read: spreads a burst of new streams
                return url, opened
        if all(self._health[u].reason == "full" for u in self.urls):
            raise APIStatusError(
                f"{self._engine}: every replica is full", status_code=503, request_id=stream_id, retryable=True
            ) from last
        if last is not None:
            raise last  # what the last replica tried said (a timeout stays a timeout)
        reasons = "; ".join(f"{u}: {self._health[u].reason or 'refused'}" for u in self.urls)
        raise APIConnectionError(f"{self._engine}: no replica available ({reasons})") from last
