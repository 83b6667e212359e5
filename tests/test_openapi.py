"""/docs explains itself (issue 12): every operation of the OpenAPI document has a one-line summary
and a description, every parameter a description, and so does every property of every schema a
request body uses, nested ones included (Where, its bounds). Each assertion names the offenders."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def spec(v1_client) -> dict:
    r = v1_client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                yield f"{method.upper()} {path}", op


def _resolve(spec: dict, ref: str) -> tuple[str, dict]:
    assert ref.startswith("#/components/schemas/"), ref
    name = ref.rsplit("/", 1)[1]
    return name, spec["components"]["schemas"][name]


def _request_schemas(spec: dict, node, seen: dict[str, dict]) -> None:
    """Every named schema reachable from ``node``: through $ref, anyOf/oneOf/allOf, items,
    prefixItems, additionalProperties and properties."""
    if isinstance(node, list):
        for x in node:
            _request_schemas(spec, x, seen)
        return
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        name, schema = _resolve(spec, node["$ref"])
        if name not in seen:
            seen[name] = schema
            _request_schemas(spec, schema, seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        _request_schemas(spec, node.get(key, []), seen)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            _request_schemas(spec, node[key], seen)
    for prop in node.get("properties", {}).values():
        _request_schemas(spec, prop, seen)


def test_the_document_has_operations(spec):
    ops = dict(_operations(spec))
    assert len(ops) >= 20 and "POST /v1/divergence" in ops and "GET /v1/plots/{figure}.{fmt}" in ops


def test_every_operation_has_a_one_line_summary_and_a_description(spec):
    no_summary = [name for name, op in _operations(spec)
                  if not str(op.get("summary", "")).strip() or "\n" in op["summary"]]
    assert not no_summary, f"operations without a one-line summary: {no_summary}"
    no_description = [name for name, op in _operations(spec) if not str(op.get("description", "")).strip()]
    assert not no_description, f"operations without a description: {no_description}"
    # FastAPI's fallback summary is the function's name in title case ("Run Sql", "Pca"): not a sentence.
    generated = [f"{name}: {op['summary']!r}" for name, op in _operations(spec) if len(op["summary"].split()) < 3]
    assert not generated, f"summaries that do not say what the operation returns: {generated}"


def test_every_parameter_has_a_description(spec):
    missing = [f"{name} {p['in']} parameter {p['name']!r}" for name, op in _operations(spec)
               for p in op.get("parameters", []) if not str(p.get("description", "")).strip()]
    assert not missing, f"parameters without a description: {missing}"


def test_every_property_of_every_request_body_has_a_description(spec):
    seen: dict[str, dict] = {}
    bodies = 0
    for _, op in _operations(spec):
        for content in op.get("requestBody", {}).get("content", {}).values():
            _request_schemas(spec, content.get("schema", {}), seen)
            bodies += 1
    assert bodies >= 6 and {"DivergenceRequest", "Where", "SqlRequest"} <= set(seen), sorted(seen)
    assert any("Bounds" in name for name in seen), sorted(seen)  # the nested bounds of `where`
    missing = [f"{name}.{prop}" for name, schema in seen.items()
               for prop, sub in schema.get("properties", {}).items() if not str(sub.get("description", "")).strip()]
    assert not missing, f"request properties without a description: {missing}"


def test_every_property_of_every_response_has_a_description(spec):
    """The Schemas section and each operation's 200 response: what every field of a result means
    (units, shapes, when it is null), nested ones included (Layer, Drift, BasisRef, ...)."""
    seen: dict[str, dict] = {}
    responses = 0
    for _, op in _operations(spec):
        for content in op.get("responses", {}).get("200", {}).get("content", {}).values():
            _request_schemas(spec, content.get("schema", {}), seen)
            responses += 1
    assert responses >= 20, responses
    assert {"DivergenceResponse", "Drift", "BasisRef", "Layer", "DegenerateLayer", "Model", "FieldValue",
            "StoreVersion", "SqlResponse", "Limits"} <= set(seen), sorted(seen)
    missing = [f"{name}.{prop}" for name, schema in seen.items()
               for prop, sub in schema.get("properties", {}).items() if not str(sub.get("description", "")).strip()]
    assert not missing, f"response properties without a description: {missing}"


def test_schema_names_are_readable(spec):
    """The Schemas section of /docs lists every component by name: no generic's full annotation."""
    unreadable = [name for name in spec["components"]["schemas"] if len(name) > 40 or "Annotated" in name]
    assert not unreadable, f"schema names that read badly in /docs: {unreadable}"


def test_each_operation_is_listed_once(spec):
    """An operation in two tags shows twice in /docs."""
    doubled = [name for name, op in _operations(spec) if len(op.get("tags", [])) != 1]
    assert not doubled, f"operations not in exactly one tag: {doubled}"
