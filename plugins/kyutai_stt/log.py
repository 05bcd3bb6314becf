"""The plugin's logger (LiveKit plugins each log under their own name)."""

import logging

logger = logging.getLogger("livekit.plugins.kyutai_stt")
