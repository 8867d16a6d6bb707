"""What one SDK method asks of the API, independent of how it is sent.

A namespace method builds a :class:`Call` (or a :class:`Stream`) and hands it to its
client; :class:`~micro_os.MicroOS` runs it at once and :class:`~micro_os.AsyncMicroOS`
returns a coroutine (or an async iterator) for it. So both clients share every method.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Optional

from . import errors
from ._decode import decode

TEXT = "text"
NOTHING = "nothing"


@dataclass
class Wait:
    """After the call, read ``poll`` until ``done`` holds for its answer (or time runs out)."""

    poll: "Call"
    done: Callable[[Any], bool]
    what: str
    timeout: float = 120.0
    # an answer that will never get there (e.g. a VM that stopped): raise at once
    failed: Optional[Callable[[Any], Optional[str]]] = None


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    result: Any = None  # a type to decode the JSON answer into; TEXT; NOTHING
    wait: Optional[Wait] = None
    # the body as bytes the SDK uploads (an open file, read as it is sent), not JSON
    upload: Optional["Upload"] = None

    def query(self) -> dict[str, str]:
        out = {}
        for k, v in self.params.items():
            if v is None:
                continue
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out

    def decode(self, status: int, text: str) -> Any:
        if status >= 400:
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            raise errors.from_problem(status, body)
        if self.result is NOTHING:
            return None
        if self.result is TEXT:
            return text
        data = json.loads(text) if text else None
        return decode(self.result, data) if self.result is not None else data


@dataclass
class Upload:
    """A local file sent as the request's body: the daemon reads what the client sends,
    never a path on its own host, so the SDK sends only what it can read itself."""

    file: BinaryIO
    content_type: str
    name: str


def _rootfs_member(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    """Files, directories and symlinks (as links) with their modes, owned by root; devices
    and fifos skipped (sockets tarfile skips itself)."""
    if info.ischr() or info.isblk() or info.isfifo():
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def upload(path: str) -> Upload:
    """``path`` opened to be uploaded: a file as it is; a directory (a root filesystem, or
    an OCI image layout) tarred into an anonymous temporary file first."""
    name = os.path.basename(os.path.normpath(os.path.abspath(path))) or "upload"
    if os.path.isdir(path):
        f = tempfile.TemporaryFile()
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as t:
            for entry in sorted(os.listdir(path)):
                t.add(os.path.join(path, entry), arcname=entry, filter=_rootfs_member)
        f.seek(0)
        return Upload(f, "application/x-tar", name)
    f = open(path, "rb")
    lower = path.lower()
    if lower.endswith((".gz", ".tgz")):
        kind = "application/gzip"
    elif lower.endswith(".tar"):
        kind = "application/x-tar"
    else:
        kind = "application/octet-stream"
    return Upload(f, kind, name)


@dataclass
class Stream:
    """A call whose answer is read as it comes: lines of text, NDJSON or Server-Sent Events."""

    call: Call
    kind: str  # "lines", "ndjson" or "sse"
    item: Any = None  # the type each NDJSON object or SSE data is decoded into


class SseParser:
    """Server-Sent Events, line by line (the fields this API sends: id, event, data)."""

    def __init__(self) -> None:
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[str]:
        """The data of an event that this line completes, if it does."""
        line = line.rstrip("\r\n")
        if not line:
            if not self.data:
                return None
            out = "\n".join(self.data)
            self.data = []
            return out
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, _, value = line.partition(":")
        if name == "data":
            self.data.append(value[1:] if value.startswith(" ") else value)
        return None


def api(*ops: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a method with the API operations it calls (``"GET /api/v1/vms/{id}"``), which
    the drift test compares with the OpenAPI document."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__api_ops__ = ops  # type: ignore[attr-defined]
        return f

    return mark


def seg(s: str) -> str:
    """A path segment, escaped."""
    from urllib.parse import quote

    return quote(str(s), safe="")


def body(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left out (``None``)."""
    return {k.rstrip("_"): v for k, v in fields.items() if v is not None}
