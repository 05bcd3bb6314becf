"""The conversation itself. This skeleton only keeps the session open: speech and the
gym tools plug in here."""

from __future__ import annotations

from livekit.agents import JobContext

from agent.resources import SessionResources
from jarvis.context import MemberContext


async def start_conversation(ctx: JobContext, context: MemberContext, resources: SessionResources) -> None:
    """Start talking with the member; returns once the conversation is running."""
    return None
