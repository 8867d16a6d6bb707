"""The Python SDK of micro-os.

    from micro_os import MicroOS
    micro = MicroOS(config_file="config.json")
    vm = micro.vm.create(name="vm-from-sdk", memory=2048, cpu=1)

Namespaces mirror the REST API (``vm``, ``container``, ``circuit`` with ``circuit.state``,
``chain``, ``ai``, ``monitor``, ``net``, ``host``, ``images``, ``templates``,
``events``); answers are the dataclasses of :mod:`micro_os.models`; errors are the
classes of :mod:`micro_os.errors`. :class:`AsyncMicroOS` is the same for asyncio.
"""

from . import models
from ._client import AsyncMicroOS, MicroOS
from ._version import __version__
from .errors import (
    Conflict,
    DaemonUnreachable,
    InvalidInput,
    MicroOSError,
    NotFound,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "MicroOS",
    "AsyncMicroOS",
    "models",
    "MicroOSError",
    "InvalidInput",
    "Unauthorized",
    "NotFound",
    "Conflict",
    "ServerError",
    "DaemonUnreachable",
    "Timeout",
    "Unavailable",
    "__version__",
]
