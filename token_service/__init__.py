"""Token service: the gym backend's door to JARVIS (POST /v1/sessions)."""
