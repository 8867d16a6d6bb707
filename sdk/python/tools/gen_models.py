"""Generates ``src/micro_os/models.py`` from the daemon's OpenAPI document.

    python tools/gen_models.py openapi.json > src/micro_os/models.py

Every object schema becomes a keyword-only dataclass (required properties without a
default, the others ``None``); a ``oneOf`` of objects becomes one dataclass holding every
variant's properties (its tag, e.g. ``result`` or ``event``, says which); string enums
become ``Literal`` aliases. The SDK's tests regenerate it from the running daemon and fail
when the committed file differs, so the models cannot drift from the API.
"""

from __future__ import annotations

import json
import keyword
import sys
from typing import Any

HEADER = '''"""The API's types, generated from ``/api/v1/openapi.json`` by ``tools/gen_models.py``.

Do not edit: regenerate. Unknown fields in an answer are ignored, so an older SDK reads a
newer daemon's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Optional, Union

'''


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


class Gen:
    def __init__(self, doc: dict[str, Any]):
        self.schemas: dict[str, Any] = doc["components"]["schemas"]

    def py_type(self, s: dict[str, Any]) -> str:
        """The annotation of a property schema."""
        if "$ref" in s:
            return ref_name(s["$ref"])
        if "oneOf" in s:
            parts = s["oneOf"]
            non_null = [p for p in parts if p.get("type") != "null"]
            inner = " | ".join(dict.fromkeys(self.py_type(p) for p in non_null)) or "Any"
            if len(non_null) > 1:
                inner = f"Union[{', '.join(dict.fromkeys(self.py_type(p) for p in non_null))}]"
            return f"Optional[{inner}]" if len(non_null) < len(parts) else inner
        if "allOf" in s and len(s["allOf"]) == 1:
            return self.py_type(s["allOf"][0])
        t = s.get("type")
        nullable = False
        if isinstance(t, list):
            nullable = "null" in t
            rest = [x for x in t if x != "null"]
            t = rest[0] if len(rest) == 1 else None
        base = self.scalar(t, s)
        return f"Optional[{base}]" if nullable else base

    def scalar(self, t: Any, s: dict[str, Any]) -> str:
        if t == "string":
            if "enum" in s:
                # a null among the values is the field's Optional, not a literal
                return "Literal[" + ", ".join(json.dumps(v) for v in s["enum"] if v is not None) + "]"
            return "datetime" if s.get("format") == "date-time" else "str"
        if t == "integer":
            return "int"
        if t == "number":
            return "float"
        if t == "boolean":
            return "bool"
        if t == "array":
            return f"list[{self.py_type(s.get('items', {}))}]"
        if t == "object":
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and not s.get("properties"):
                return f"dict[str, {self.py_type(extra)}]"
            return "dict[str, Any]"
        return "Any"

    def properties(self, s: dict[str, Any]) -> tuple[dict[str, Any], set[str]] | None:
        """Properties and required names of an object schema (through allOf and a oneOf of
        objects), or None when it is not an object."""
        if "$ref" in s:
            return self.properties(self.schemas[ref_name(s["$ref"])])
        if s.get("type") == "object" and "properties" in s:
            # an object's own properties; an allOf/oneOf beside them only constrains them
            return s["properties"], set(s.get("required", []))
        if "allOf" in s:
            props: dict[str, Any] = {}
            req: set[str] = set()
            for part in s["allOf"]:
                if "oneOf" in part:
                    # an optional flattened part (serde's flatten of an Option): all optional
                    for v in part["oneOf"]:
                        if v.get("type") != "null":
                            sub = self.properties(v)
                            if sub:
                                props.update(sub[0])
                    continue
                sub = self.properties(part)
                if sub:
                    props.update(sub[0])
                    req |= sub[1]
            return props, req
        if "oneOf" in s:
            variants = [self.properties(v) for v in s["oneOf"]]
            if not variants or any(v is None for v in variants):
                return None
            props = {}
            for p, _ in variants:  # type: ignore[misc]
                for k, v in p.items():
                    if k in props and props[k] != v and "enum" in v and "enum" in props[k]:
                        props[k] = {"type": "string", "enum": props[k]["enum"] + v["enum"]}
                    else:
                        props.setdefault(k, v)
            common = set.intersection(*(r for _, r in variants))  # type: ignore[misc]
            return props, common
        if s.get("type") == "object" and "properties" in s:
            return s["properties"], set(s.get("required", []))
        return None

    def emit(self) -> str:
        out = [HEADER]
        aliases, classes = [], []
        for name in sorted(self.schemas):
            s = self.schemas[name]
            shape = self.properties(s)
            doc = (s.get("description") or "").strip()
            if shape is None:
                if s.get("type") == "string" and "enum" in s:
                    aliases.append(f"{name} = {self.py_type(s)}\n")
                elif "oneOf" in s:
                    aliases.append(f"{name} = Union[{', '.join(dict.fromkeys(self.py_type(p) for p in s['oneOf']))}]\n")
                else:
                    aliases.append(f"{name} = {self.py_type(s)}\n")
                continue
            props, req = shape
            lines = ["@dataclass(kw_only=True)", f"class {name}:"]
            if doc:
                lines.append('    """' + doc.replace("\\", "\\\\").replace('"""', "'''") + '"""')
                lines.append("")
            for pname in sorted(props, key=lambda p: (p not in req, p)):
                ptype = self.py_type(props[pname])
                field = pname + "_" if keyword.iskeyword(pname) else pname
                if pname in req:
                    lines.append(f"    {field}: {ptype}")
                else:
                    opt = ptype if ptype.startswith("Optional[") else f"Optional[{ptype}]"
                    lines.append(f"    {field}: {opt} = None")
            if not props:
                lines.append("    pass")
            classes.append("\n".join(lines) + "\n")
        # aliases last: they may name classes; the classes' annotations are evaluated lazily
        out.append("\n" + "\n\n".join(classes))
        out.append("\n" + "".join(aliases))
        return "".join(out)


def main() -> None:
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    sys.stdout.write(Gen(doc).emit())


if __name__ == "__main__":
    main()
