"""``GET /docs``: the API's reference as one plain HTML page, rendered from its OpenAPI document.

Must never load anything from elsewhere or run a script: Swagger UI comes from a CDN and would
need the token in the browser, so this page is rendered here, behind the token, from the same
``app.openapi()`` that ``/openapi.json`` serves.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["render_reference"]

_METHODS = ("get", "post", "put", "patch", "delete")
_BOUNDS = (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"))


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The object schema a ``$ref`` (or an optional body's ``anyOf [$ref, null]``) points at."""
    for option in schema.get("anyOf", ()):
        if "$ref" in option:
            return _resolve(spec, option)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        found: dict[str, Any] = spec
        for part in ref.removeprefix("#/").split("/"):
            found = found.get(part, {})
        return found
    return schema


def _type_of(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_of(spec, s) for s in schema["anyOf"])
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list of {_type_of(spec, schema.get('items', {}))}"
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    text = str(schema.get("type", "any"))
    bounds = [f"{sign} {schema[key]}" for key, sign in _BOUNDS if key in schema]
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _field_rows(spec: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    schema = _resolve(spec, schema)
    required = set(schema.get("required", ()))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        default = f"default {prop['default']!r}" if "default" in prop else ""
        need = "required" if name in required else default
        rows.append(
            f"<tr><td><code>{escape(name)}</code></td><td>{escape(_type_of(spec, prop))}</td>"
            f"<td>{escape(need)}</td><td>{escape(str(prop.get('description', '')))}</td></tr>"
        )
    return rows


def _table(title: str, rows: list[str]) -> str:
    if not rows:
        return ""
    head = "<tr><th>name</th><th>type</th><th></th><th>meaning</th></tr>"
    return f"<h4>{escape(title)}</h4><table>{head}{''.join(rows)}</table>"


def _operation(spec: dict[str, Any], method: str, path: str, op: dict[str, Any]) -> str:
    params = [
        f"<tr><td><code>{escape(p['name'])}</code> ({escape(p.get('in', ''))})</td>"
        f"<td>{escape(_type_of(spec, p.get('schema', {})))}</td>"
        f"<td>{'required' if p.get('required') else ''}</td>"
        f"<td>{escape(str(p.get('description', p.get('schema', {}).get('description', ''))))}</td>"
        "</tr>"
        for p in op.get("parameters", ())
    ]
    request_body = op.get("requestBody", {})
    body = request_body.get("content", {}).get("application/json", {})
    body_rows = _field_rows(spec, body["schema"]) if "schema" in body else []
    body_title = "JSON body" + ("" if request_body.get("required") else " (optional)")
    answers = ", ".join(
        f"{escape(str(code))} {escape(str(r.get('description', '')))}"
        for code, r in op.get("responses", {}).items()
    )
    doc = escape(str(op.get("description", op.get("summary", "")))).replace("\n\n", "<br><br>")
    return (
        f"<section><h3><code>{method.upper()} {escape(path)}</code></h3><p>{doc}</p>"
        + _table("parameters", params)
        + _table(body_title, body_rows)
        + f"<p class='answers'>Answers: {answers}</p></section>"
    )


def render_reference(spec: dict[str, Any]) -> str:
    """The page: every path and method with its parameters, JSON body fields and answers."""
    info = spec.get("info", {})
    sections = [
        _operation(spec, method, path, op)
        for path, ops in spec.get("paths", {}).items()
        for method, op in ops.items()
        if method in _METHODS
    ]
    title = f"{info.get('title', 'API')} {info.get('version', '')} API reference"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/static/dashboard.css"></head><body class="reference">'
        f"<h1>{escape(title)}</h1><p>{escape(str(info.get('description', '')))} Every endpoint "
        "but <code>/health</code> needs <code>Authorization: Bearer &lt;api_token&gt;</code>; "
        "errors are JSON <code>{code, message, hint}</code>. Machine-readable: "
        "<code>/openapi.json</code>.</p>" + "".join(sections) + "</body></html>"
    )
