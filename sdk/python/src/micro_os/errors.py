"""One exception class per problem type of the API, each carrying the server's message.

The daemon answers errors as RFC 9457 ``application/problem+json`` documents whose
``type`` ends in the problem's slug (``.../problems/not-found``); the class is chosen by
that slug, then by the status code.
"""

from __future__ import annotations

from typing import Optional


class MicroOSError(Exception):
    """Something the daemon refused or could not do (or could not be asked)."""

    def __init__(self, message: str, *, status: Optional[int] = None, problem_type: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem_type = problem_type


class InvalidInput(MicroOSError):
    """400, 413, 422: the request names something badly; nothing was changed."""


class Unauthorized(MicroOSError):
    """401, 403: no token, a wrong token, or a client the daemon does not serve."""


class NotFound(MicroOSError):
    """404: no such object (or endpoint)."""


class Conflict(MicroOSError):
    """409: the object exists already, or is not in a state that allows this."""


class ServerError(MicroOSError):
    """500, 503: the daemon failed; its log says more (``micro.monitor.daemon_logs()``)."""


class Unavailable(ServerError):
    """503: not ready yet (a node still starting): worth trying again shortly."""


class DaemonUnreachable(MicroOSError):
    """No answer from the daemon: it is not running, or not at this address."""


class Timeout(MicroOSError):
    """A wait (``wait=True``) ran out of time before the object got there."""


_BY_SLUG = {
    "bad-request": InvalidInput,
    "payload-too-large": InvalidInput,
    "unprocessable-entity": InvalidInput,
    "unauthorized": Unauthorized,
    "forbidden": Unauthorized,
    "not-found": NotFound,
    "conflict": Conflict,
    "internal-server-error": ServerError,
    "service-unavailable": Unavailable,
}

_BY_STATUS = {400: InvalidInput, 413: InvalidInput, 422: InvalidInput, 401: Unauthorized, 403: Unauthorized,
              404: NotFound, 409: Conflict, 503: Unavailable}


def from_problem(status: int, body: object) -> MicroOSError:
    """The exception for an error answer (a problem document, or any other body)."""
    detail, ptype = None, None
    if isinstance(body, dict):
        detail = body.get("detail")
        ptype = body.get("type")
    cls = _BY_SLUG.get(str(ptype or "").rsplit("/", 1)[-1]) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else MicroOSError
    message = detail if isinstance(detail, str) and detail else (body if isinstance(body, str) and body else f"HTTP {status}")
    return cls(str(message), status=status, problem_type=ptype)
