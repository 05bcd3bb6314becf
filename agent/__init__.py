"""The JARVIS agent worker: one LiveKit job per kiosk session."""
