"""A stand-in for Groq / vLLM: a real HTTP server speaking OpenAI-compatible chat completions.

The agent's real LLM client (LiveKit's OpenAI/Groq plugins, over httpx) talks to it exactly
as it would to Groq: streaming SSE, tool calls, HTTP errors, slow answers. Each test scripts
the replies it needs, in order, and can read back every request the client sent.

    async with LLMStandIn([CallTool("display_video_tutorial", {"exercise": "squat"}),
                           EchoToolResult()]) as llm_server:
        llm = openai.LLM(base_url=llm_server.base_url, api_key="test", model="standin")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Say:
    """Stream this text, in small chunks, after `delay_s` (a slow model).

    With `stall_after_words`, the stream stops after that many words and sends nothing more for
    `stall_s` (a provider whose stream stalls mid-answer), then finishes if the client is still there.
    """

    text: str
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    stall_after_words: int | None = None
    stall_s: float = 60.0


@dataclass
class CallTool:
    """Ask for one tool call. `arguments` may be a raw string, to send malformed JSON."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    delay_s: float = 0.0
    # A fixed tool-call id, to send the same call twice as a model or a retry can; random if None.
    call_id: str | None = None


@dataclass
class EchoToolResult:
    """Say the content of the latest tool result, as a model does when it relays it."""

    prefix: str = ""


@dataclass
class Fail:
    """Answer with an HTTP error, as an overloaded provider does."""

    status: int = 500
    message: str = "internal error (stand-in)"


@dataclass
class Hang:
    """Accept the request and never answer within `seconds` (a provider that stalls)."""

    seconds: float = 60.0


Reply = Say | CallTool | EchoToolResult | Fail | Hang
Responder = Callable[[dict[str, Any]], Reply]

EXHAUSTED_TEXT = "STANDIN_SCRIPT_EXHAUSTED"


def last_tool_result(request: dict[str, Any]) -> str:
    return _last_text(request, "tool")


def last_user_text(request: dict[str, Any]) -> str:
    return _last_text(request, "user")


def _last_text(request: dict[str, Any], role: str) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == role:
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def squat_conversation(request: dict[str, Any]) -> Reply:
    """A member asking for the squat video: the tool when asked, then the tool's result relayed."""
    if request["messages"][-1]["role"] == "tool":
        return EchoToolResult("D'accord ! ")
    if "squat" in last_user_text(request).lower():
        return CallTool("display_video_tutorial", {"exercise": "squat"})
    return Say("Avec plaisir.")


class LLMStandIn:
    """Serves scripted replies on 127.0.0.1 at a free port; one reply per request, in order."""

    def __init__(self, replies: list[Reply] | Responder | None = None, model: str = "standin") -> None:
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []
        self.exhausted = 0
        self._queue: list[Reply] = []
        self._responder: Responder | None = None
        self.script(replies or [])
        self._runner: web.AppRunner | None = None
        self.port = 0

    def script(self, replies: list[Reply] | Responder) -> None:
        if callable(replies):
            self._responder, self._queue = replies, []
        else:
            self._responder, self._queue = None, list(replies)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def worker_env(self) -> dict[str, str]:
        """The agent worker's LLM settings pointing at this stand-in (as a vLLM endpoint)."""
        return {
            "JARVIS_LLM__PRIMARY__PROVIDER": "vllm",
            "JARVIS_LLM__PRIMARY__MODEL": self.model,
            "JARVIS_LLM__PRIMARY__BASE_URL": self.base_url,
        }

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def start(self) -> LLMStandIn:
        return await self.start_on(0)

    async def start_on(self, port: int) -> LLMStandIn:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # Stalled answers are abandoned at stop rather than awaited.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LLMStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _next_reply(self, request: dict[str, Any]) -> Reply:
        if self._responder is not None:
            return self._responder(request)
        if self._queue:
            return self._queue.pop(0)
        self.exhausted += 1
        return Say(EXHAUSTED_TEXT)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat_completions(self, http_request: web.Request) -> web.StreamResponse:
        request = await http_request.json()
        self.requests.append(request)
        self.request_times.append(time.perf_counter())
        reply = self._next_reply(request)
        if isinstance(reply, Fail):
            return web.json_response(
                {"error": {"message": reply.message, "type": "server_error", "code": reply.status}},
                status=reply.status,
            )
        if isinstance(reply, Hang):
            await asyncio.sleep(reply.seconds)
            return web.json_response({"error": {"message": "stalled"}}, status=504)
        if isinstance(reply, EchoToolResult):
            reply = Say(reply.prefix + last_tool_result(request))
        await asyncio.sleep(reply.delay_s)
        if not request.get("stream"):
            return web.json_response(self._full_completion(reply))
        return await self._stream(http_request, request, reply)

    def _full_completion(self, reply: Say | CallTool) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "stop"
        if isinstance(reply, Say):
            message["content"] = reply.text
        else:
            message["tool_calls"] = [self._tool_call(reply)]
            finish = "tool_calls"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    @staticmethod
    def _tool_call(reply: CallTool) -> dict[str, Any]:
        arguments = reply.arguments if isinstance(reply.arguments, str) else json.dumps(reply.arguments)
        return {
            "id": reply.call_id or f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": reply.name, "arguments": arguments},
        }

    async def _stream(
        self, http_request: web.Request, request: dict[str, Any], reply: Say | CallTool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(http_request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            if isinstance(reply, Say):
                await send({"role": "assistant", "content": ""})
                words = reply.text.split(" ")
                for index, word in enumerate(words):
                    if index == reply.stall_after_words:
                        await asyncio.sleep(reply.stall_s)
                    await send({"content": word if index == 0 else " " + word})
                    if reply.chunk_delay_s:
                        await asyncio.sleep(reply.chunk_delay_s)
                await send({}, finish="stop")
            else:
                call = self._tool_call(reply)
                arguments = call["function"]["arguments"]
                await send(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"index": 0, "id": call["id"], "type": "function",
                             "function": {"name": reply.name, "arguments": ""}}
                        ],
                    }
                )  # fmt: skip
                # Arguments arrive in pieces, as real providers send them.
                for start in range(0, len(arguments), 16):
                    await send({"tool_calls": [{"index": 0, "function": {"arguments": arguments[start : start + 16]}}]})
                await send({}, finish="tool_calls")

            if (request.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                await response.write(f"data: {json.dumps(usage)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            # The agent hung up on a reply it no longer wants (a barge-in, a preemptive generation
            # redone), as it would on a real provider: nothing to report.
            pass
        return response


def demo_responder(request: dict[str, Any]) -> Reply:
    """The offline demo's "model": a few French rules instead of Groq, so the loop can be shown.

    It asks for the video tool when a member mentions an exercise it knows, relays tool
    results, and otherwise answers with a short spoken sentence.
    """
    if request.get("messages") and request["messages"][-1].get("role") == "tool":
        return EchoToolResult()
    said = last_user_text(request).lower()
    for exercise in ("squat", "développé couché", "soulevé de terre", "traction", "fente"):
        if exercise in said and request.get("tools"):
            return CallTool("display_video_tutorial", {"exercise": exercise})
    if "horaire" in said or "ouvert" in said:
        return Say("La salle est ouverte de six heures à vingt-trois heures en semaine.")
    return Say(
        "Bien reçu ! Je suis le modèle de démonstration hors ligne : branche Groq ou vLLM pour de vraies réponses."
    )


async def _serve(port: int) -> None:
    server = LLMStandIn(demo_responder)
    app_started = await server.start_on(port)
    print(f"LLM stand-in listening on {app_started.base_url}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI-compatible stand-in LLM for the offline demo")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
