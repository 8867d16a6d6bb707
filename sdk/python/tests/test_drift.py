"""The SDK against the daemon's OpenAPI document: every operation has a method, every
method calls an operation the document has, the models are generated from it, and the
versions agree."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import micro_os
from micro_os import MicroOS, _api

SDK = Path(__file__).resolve().parents[1]


def sdk_methods() -> list[tuple[str, str, tuple[str, ...]]]:
    """(class, method, the operations it calls) of every SDK method."""
    out = []
    for _, cls in inspect.getmembers(_api, inspect.isclass):
        if not issubclass(cls, _api.Namespace):
            continue
        for name, f in inspect.getmembers(cls, inspect.isfunction):
            ops = getattr(f, "__api_ops__", ())
            if ops:
                out.append((cls.__name__, name, ops))
    return out


def sdk_operations() -> dict[str, str]:
    return {op: f"{cls}.{name}" for cls, name, ops in sdk_methods() for op in ops}


def test_every_operation_of_the_openapi_document_has_a_method(micro: MicroOS) -> None:
    doc = micro.openapi()
    documented = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    # the health answer is the client's own method
    documented.discard("GET /api/v1/health")
    ours = sdk_operations()
    assert sorted(documented - set(ours)) == [], "operations without an SDK method"
    assert sorted(set(ours) - documented) == [], "SDK methods for operations the API does not have"


def test_request_bodies_name_only_fields_the_schema_has(micro: MicroOS) -> None:
    doc = micro.openapi()
    schemas = doc["components"]["schemas"]

    def fields(schema: dict) -> set[str]:
        if "$ref" in schema:
            return fields(schemas[schema["$ref"].rsplit("/", 1)[-1]])
        out = set(schema.get("properties", {}))
        for part in schema.get("allOf", []) + schema.get("oneOf", []):
            out |= fields(part)
        return out

    for cls, name, ops in sdk_methods():
        f = getattr(getattr(_api, cls), name)
        params = [p.rstrip("_") for p in inspect.signature(f).parameters if p != "self"]
        allowed: set[str] = set()
        for op in ops:
            method, path = op.split(" ", 1)
            spec = doc["paths"][path][method.lower()]
            allowed |= {p["name"] for p in spec.get("parameters", [])}
            content = spec.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            if body:
                allowed |= fields(body)
            # an operation whose body is bytes: the local file or directory the SDK uploads
            # (a path on this client's machine, never one the daemon reads)
            if any(c.get("schema", {}).get("format") == "binary" for c in content.values()):
                allowed |= {"path", "file", "from_dir"}
        # the SDK's own knobs, and the names that stand for path parameters
        allowed |= {"wait", "timeout", "progress", "settings", "containers", "vms", "circuit", "set", "id", "start",
                    "rm"}
        unknown = [p for p in params if p not in allowed]
        assert not unknown, f"{cls}.{name} ({', '.join(ops)}) takes {unknown}, which the API does not"


def test_the_models_are_generated_from_the_served_document(micro: MicroOS, tmp_path: Path) -> None:
    import json

    (tmp_path / "openapi.json").write_text(json.dumps(micro.openapi()))
    fresh = subprocess.run([sys.executable, str(SDK / "tools/gen_models.py"), str(tmp_path / "openapi.json")],
                           capture_output=True, text=True, check=True).stdout
    committed = (SDK / "src/micro_os/models.py").read_text()
    assert fresh == committed, "src/micro_os/models.py is stale: regenerate it with tools/gen_models.py"


def test_the_version_is_the_projects(micro: MicroOS) -> None:
    cargo = (SDK.parents[1] / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert micro_os.__version__ == version
    assert micro.health().version == version
