"""The one error tree: start-up failures and API errors rendered as the contract's JSON."""

from __future__ import annotations

from typing import Any

#: The contract's ``code`` for each HTTP status an error may have.
CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 412: "precondition_failed",
         413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
         422: "unprocessable", 426: "upgrade_required", 431: "request_header_fields_too_large",
         500: "internal_error", 503: "unavailable", 505: "http_version_not_supported"}


def code_for(status: int) -> str:
    """The contract's error ``code`` for ``status``."""
    return CODES.get(status, "error")


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


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {}, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str, **details: Any) -> ApiError:
    return ApiError(403, "forbidden", message, details)


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


def precondition_failed(message: str, **details: Any) -> ApiError:
    """A conditional request (If-Match, If-None-Match) whose condition does not hold."""
    return ApiError(412, "precondition_failed", message, details)


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is larger than the limit of {limit} bytes",
                    {"limit": limit})


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    "send the body as JSON with Content-Type: application/json",
                    {"content_type": content_type[:100]})


def internal_error() -> ApiError:
    return ApiError(500, "internal_error",
                    "the server failed to handle this request; it has been logged")


def from_status(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    """An error Tornado or the HTTP layer raised by status alone, with the contract's code."""
    return ApiError(status, code_for(status), message, headers=headers)


def unavailable(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(503, "unavailable", message, {}, {"Retry-After": str(retry_after)})
