"""The one error tree: start-up failures and API errors rendered as the contract's JSON."""

from __future__ import annotations

from typing import Any


class PylightError(Exception):
    """Base of every error Pylight raises on purpose."""


class StartupError(PylightError):
    """Start-up cannot go on; the message is printed as one line and the process exits."""


class ApiError(PylightError):
    """An error answered to an HTTP client as `{"error": {...}}` with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def bad_request(message: str, **details: Any) -> ApiError:
    return ApiError(400, "bad_request", message, details)


def not_found(message: str, **details: Any) -> ApiError:
    return ApiError(404, "not_found", message, details)


def method_not_allowed(message: str, allow: list[str]) -> ApiError:
    return ApiError(
        405, "method_not_allowed", message, {"allow": allow}, {"Allow": ", ".join(allow)}
    )


def conflict(message: str, **details: Any) -> ApiError:
    return ApiError(409, "conflict", message, details)


def unprocessable(message: str, **details: Any) -> ApiError:
    return ApiError(422, "unprocessable", message, details)


def unavailable(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(503, "unavailable", message, {}, {"Retry-After": str(retry_after)})
