"""The two clients: :class:`MicroOS` runs each call at once, :class:`AsyncMicroOS`
returns coroutines and async iterators. httpx serves both; the namespaces are shared."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import httpx

from . import errors
from ._api import Ai, Chain, Circuits, Containers, Events, Hosts, Images, Monitor, Net, Templates, Vms
from ._call import Call, SseParser, Stream, Wait
from ._config import resolve
from ._decode import decode
from .models import HealthResponse


class Runner:
    """What a namespace needs of its client."""

    url: str

    def _run(self, call: Call) -> Any:
        raise NotImplementedError

    def _stream(self, stream: Stream) -> Any:
        raise NotImplementedError

    def _then(self, result: Any, f: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _collect(self, it: Any) -> Any:
        raise NotImplementedError

    def _image_job(self, stream: Stream, progress: Optional[Callable[[Any], None]]) -> Any:
        raise NotImplementedError

    def _namespaces(self) -> None:
        self.vm = Vms(self)
        self.container = Containers(self)
        self.circuit = Circuits(self)
        self.chain = Chain(self)
        self.ai = Ai(self)
        self.monitor = Monitor(self)
        self.net = Net(self)
        self.host = Hosts(self)
        self.images = Images(self)
        self.templates = Templates(self)
        self.events = Events(self)

    def _unreachable(self, e: Exception) -> errors.DaemonUnreachable:
        return errors.DaemonUnreachable(
            f"cannot reach the micro-os daemon at {self.url} ({type(e).__name__}: {e}); "
            "start it with `micro-os daemon` or point MICRO_OS_API at it")


def _headers(token: Optional[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Items:
    """The items of a streamed answer, fed its lines one at a time."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.sse = SseParser()

    def feed(self, line: str) -> Optional[Any]:
        kind = self.stream.kind
        if kind == "lines":
            return line
        if kind == "ndjson":
            return decode(self.stream.item, json.loads(line)) if line.strip() else None
        data = self.sse.feed(line)
        return decode(self.stream.item, json.loads(data)) if data is not None else None


def _image_result(ev: Any) -> Any:
    if ev.event == "error":
        raise errors.from_problem(ev.status or 500, {"detail": ev.message})
    return ev.image if ev.event == "done" else None


class MicroOS(Runner):
    """A client of a micro-os daemon.

    ``MicroOS(config_file="config.json")`` reads where the daemon is (``api_addr`` or
    ``api``) and its token (``token``, ``token_file``, ``home``, or the ``token`` file
    beside the config) from that file; ``MicroOS(url=..., token=...)`` takes them as
    given; ``MicroOS()`` finds them as the CLI does (``MICRO_OS_API``, ``MICRO_OS_TOKEN``,
    the token in ``MICRO_OS_HOME``).
    """

    def __init__(self, config_file: Optional[str] = None, *, url: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, transport: Optional[httpx.BaseTransport] = None):
        s = resolve(config_file, url, token, timeout)
        self.url = s.url
        self._timeout = s.timeout
        self._http = httpx.Client(base_url=s.url, headers=_headers(s.token),
                                  timeout=httpx.Timeout(s.timeout, connect=10.0), transport=transport)
        self._namespaces()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "MicroOS":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> HealthResponse:
        """The daemon's health answer (no token needed): status and version."""
        return self._run(Call("GET", "/api/v1/health", result=HealthResponse))

    def openapi(self) -> dict[str, Any]:
        """The daemon's OpenAPI document."""
        return self._run(Call("GET", "/api/v1/openapi.json"))

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        timeout = httpx.Timeout(self._timeout, connect=10.0, read=None) if stream or call.upload else None
        if call.upload is not None:
            req = self._http.build_request(call.method, call.path, params=call.query(), content=call.upload.file,
                                           headers={"Content-Type": call.upload.content_type}, timeout=timeout)
        else:
            req = self._http.build_request(call.method, call.path, params=call.query(),
                                           json=call.body if call.body is not None else None, timeout=timeout)
        try:
            return self._http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            if call.upload is not None:
                call.upload.file.close()

    def _run(self, call: Call) -> Any:
        r = self._send(call)
        out = call.decode(r.status_code, r.text)
        return self._wait(call.wait) if call.wait else out

    def _wait(self, w: Wait) -> Any:
        deadline = time.monotonic() + w.timeout
        while True:
            v = self._run(w.poll)
            if w.done(v):
                return v
            why = w.failed(v) if w.failed else None
            if why:
                raise errors.Conflict(why)
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{w.what}: not after {w.timeout:.0f} s")
            time.sleep(0.2)

    def _open(self, stream: Stream) -> httpx.Response:
        r = self._send(stream.call, stream=True)
        if r.status_code >= 400:
            r.read()
            r.close()
            stream.call.decode(r.status_code, r.text)
        return r

    def _stream(self, stream: Stream) -> Iterator[Any]:
        r = self._open(stream)

        def items() -> Iterator[Any]:
            items = _Items(stream)
            try:
                for line in r.iter_lines():
                    item = items.feed(line)
                    if item is not None:
                        yield item
            except httpx.TransportError as e:
                raise self._unreachable(e) from None
            finally:
                r.close()

        return items()

    def _then(self, result: Any, f: Callable[[Any], Any]) -> Any:
        return f(result)

    def _collect(self, it: Iterator[Any]) -> list[Any]:
        return list(it)

    def _image_job(self, stream: Stream, progress: Optional[Callable[[Any], None]]) -> Any:
        image = None
        for ev in self._stream(stream):
            if progress:
                progress(ev)
            image = _image_result(ev) or image
        return image


class AsyncMicroOS(Runner):
    """:class:`MicroOS` for asyncio: every method is awaited; ``follow=True`` and
    ``events.stream()`` give async iterators."""

    def __init__(self, config_file: Optional[str] = None, *, url: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, transport: Optional[httpx.AsyncBaseTransport] = None):
        s = resolve(config_file, url, token, timeout)
        self.url = s.url
        self._timeout = s.timeout
        self._http = httpx.AsyncClient(base_url=s.url, headers=_headers(s.token),
                                       timeout=httpx.Timeout(s.timeout, connect=10.0), transport=transport)
        self._namespaces()

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncMicroOS":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def health(self) -> HealthResponse:
        return await self._run(Call("GET", "/api/v1/health", result=HealthResponse))

    async def openapi(self) -> dict[str, Any]:
        return await self._run(Call("GET", "/api/v1/openapi.json"))

    async def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        timeout = httpx.Timeout(self._timeout, connect=10.0, read=None) if stream or call.upload else None
        if call.upload is not None:
            up = call.upload

            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await asyncio.to_thread(up.file.read, 1 << 20):
                    yield chunk

            req = self._http.build_request(call.method, call.path, params=call.query(), content=chunks(),
                                           headers={"Content-Type": up.content_type}, timeout=timeout)
        else:
            req = self._http.build_request(call.method, call.path, params=call.query(),
                                           json=call.body if call.body is not None else None, timeout=timeout)
        try:
            return await self._http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            if call.upload is not None:
                call.upload.file.close()

    async def _run(self, call: Call) -> Any:
        r = await self._send(call)
        out = call.decode(r.status_code, r.text)
        return await self._wait(call.wait) if call.wait else out

    async def _wait(self, w: Wait) -> Any:
        deadline = time.monotonic() + w.timeout
        while True:
            v = await self._run(w.poll)
            if w.done(v):
                return v
            why = w.failed(v) if w.failed else None
            if why:
                raise errors.Conflict(why)
            if time.monotonic() > deadline:
                raise errors.Timeout(f"{w.what}: not after {w.timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def _stream(self, stream: Stream) -> AsyncIterator[Any]:
        r = await self._send(stream.call, stream=True)
        try:
            if r.status_code >= 400:
                await r.aread()
                stream.call.decode(r.status_code, r.text)
            items = _Items(stream)
            async for line in r.aiter_lines():
                item = items.feed(line)
                if item is not None:
                    yield item
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        finally:
            await r.aclose()

    async def _then(self, result: Any, f: Callable[[Any], Any]) -> Any:
        return f(await result)

    async def _collect(self, it: AsyncIterator[Any]) -> list[Any]:
        return [x async for x in it]

    async def _image_job(self, stream: Stream, progress: Optional[Callable[[Any], None]]) -> Any:
        image = None
        async for ev in self._stream(stream):
            if progress:
                progress(ev)
            image = _image_result(ev) or image
        return image
