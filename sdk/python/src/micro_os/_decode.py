"""JSON to the generated dataclasses, by their type hints."""

from __future__ import annotations

import dataclasses
import functools
import keyword
import typing
from datetime import datetime
from typing import Any, Union


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as type ``tp``; fields the type does not know are ignored."""
    if value is None or tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in args:
            try:
                return decode(a, value)
            except (TypeError, ValueError, KeyError):
                continue
        return value
    if origin is typing.Literal:
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        return [decode(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: decode(item, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__} from {type(value).__name__}")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            key = f.name[:-1] if f.name.endswith("_") and keyword.iskeyword(f.name[:-1]) else f.name
            if key in value:
                kwargs[f.name] = decode(hints[f.name], value[key])
        return tp(**kwargs)
    if tp is datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    if tp is float and isinstance(value, int):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise TypeError(f"{tp.__name__} from {type(value).__name__}")
    return value
