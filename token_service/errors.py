"""The token service's refusals: an HTTP status, a stable machine-readable code and a reason."""

from __future__ import annotations


class ApiError(Exception):
    """An answer with a status, a stable code and a reason the gym's developers can act on."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
