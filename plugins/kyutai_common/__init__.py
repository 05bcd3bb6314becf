"""What the Kyutai STT and TTS packages share, written once.

Nothing is imported here: `protocol` and `settings` are light (msgpack, pydantic) and serve the
plugins and the servers; `checkpoint` loads torch and moshi (engine servers only); `client` loads
LiveKit (plugins only).
"""
