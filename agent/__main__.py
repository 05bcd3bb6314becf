"""``python -m agent start``: run a JARVIS worker (LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET)."""

from livekit.agents import cli

from agent.worker import build_server

if __name__ == "__main__":
    cli.run_app(build_server())
