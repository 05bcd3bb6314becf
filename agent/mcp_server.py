"""The gym tools over MCP (streamable HTTP): `python -m agent.mcp_server`.

The same tools, schemas and rules as in the voice agent (agent/tools.py). Whose data they
touch is never an argument: each request names its session in the `X-Jarvis-Session`
header and proves its gym with `Authorization: Bearer <gym API key>`; the session must be
that gym's and still open. The MCP server is not in the kiosk's LiveKit room, so
`display_video_tutorial` finds the video and reports that no screen is attached.

MCP carries no tool-call id and no turn, so a write tool called again with the same
(normalised) arguments in the same session is a retry: it returns its first result and
writes nothing (agent/tools.py, `effect_keys`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import mcp.types as mcp_types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from starlette.applications import Starlette

from agent.tools import TOOL_SPECS, GymTools, SessionIds, ToolFailure, tool_json_schema
from jarvis.db import create_pool, gym_key_hash
from jarvis.settings import DB_TIMEOUT_S, StoreSettings

logger = logging.getLogger("jarvis.mcp")

SESSION_HEADER = "x-jarvis-session"


class MCPServerSettings(StoreSettings):
    """The MCP server's settings, from the environment (``JARVIS_*``; the stores' from StoreSettings)."""

    mcp_host: str = "127.0.0.1"
    mcp_port: int = 8001


class SessionRefused(Exception):
    """The request does not prove a gym key and an open session of that gym."""


async def resolve_session(
    pool: Any, authorization: str | None, session_id: str | None, db_timeout_s: float = DB_TIMEOUT_S
) -> SessionIds:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise SessionRefused("clé de salle manquante (Authorization: Bearer …)")
    try:
        session_uuid = str(uuid.UUID(session_id or ""))
    except ValueError:
        raise SessionRefused(f"session manquante ou invalide (en-tête {SESSION_HEADER})") from None
    async with pool.acquire(timeout=db_timeout_s) as conn:
        row = await conn.fetchrow(
            "SELECT s.gym_id::text AS gym_id, s.member_id::text AS member_id FROM gym_api_keys k"
            " JOIN voice_sessions s ON s.gym_id = k.gym_id"
            " WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND s.id = $2 AND s.ended_at IS NULL",
            gym_key_hash(key),
            session_uuid,
        )
    if row is None:
        raise SessionRefused("session inconnue, terminée ou d'une autre salle")
    return SessionIds(gym_id=row["gym_id"], member_id=row["member_id"], session_id=session_uuid)


def _text_result(text: str, is_error: bool) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)], is_error=is_error)


def build_server(pool: Any, db_timeout_s: float = DB_TIMEOUT_S) -> Server[Any]:
    """The MCP server over an open database pool."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(
            tools=[
                mcp_types.Tool(name=spec.name, description=spec.description, input_schema=tool_json_schema(spec))
                for spec in TOOL_SPECS
            ]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        headers = getattr(ctx.request, "headers", None) or {}
        try:
            ids = await resolve_session(pool, headers.get("authorization"), headers.get(SESSION_HEADER), db_timeout_s)
        except SessionRefused as refused:
            return _text_result(f"Refusé : {refused}.", is_error=True)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning("mcp: database unavailable (%s)", type(exc).__name__)
            return _text_result("Le système ne répond pas pour le moment.", is_error=True)
        try:
            tools = GymTools(pool, ids, db_timeout_s=db_timeout_s)
            return _text_result(await tools.call(params.name, dict(params.arguments or {})), False)
        except ToolFailure as failure:
            return _text_result(failure.message, is_error=True)

    return Server("jarvis-gym-tools", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


def build_app(pool: Any, db_timeout_s: float = DB_TIMEOUT_S) -> Starlette:
    # Stateless: every request carries its own gym key and session, nothing is kept between them.
    return build_server(pool, db_timeout_s).streamable_http_app(stateless_http=True, json_response=True)


async def serve(settings: MCPServerSettings) -> None:
    pool = await create_pool(settings.database_url, min_size=0, max_size=5, timeout_s=settings.db_timeout_s)
    try:
        app = build_app(pool, settings.db_timeout_s)
        config = uvicorn.Config(app, host=settings.mcp_host, port=settings.mcp_port, log_level="info")
        await uvicorn.Server(config).serve()
    finally:
        await pool.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(MCPServerSettings()))


if __name__ == "__main__":
    main()
