"""The published contract: `/openapi.json`, and `/docs`, a page rendered from it.

The page is plain HTML built on the server from the document: it needs no script, no CDN
and no network, so it works on an isolated cluster as well as anywhere.
"""
from __future__ import annotations

import json
from html import escape
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..openapi import spec_of
from ..registry import current_registry

bp = Blueprint("contract", __name__)

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put,.patch{color:#a60}.delete{color:#c22}
code,pre{font:13px ui-monospace,monospace;background:#f6f6f6;border-radius:4px}
pre{padding:.5rem;overflow:auto;max-height:24rem} table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
"""


@bp.get("/openapi.json")
def openapi() -> Response:
    """Return the OpenAPI 3 document of this API."""
    return jsonify(spec_of(current_app, current_registry().version))


def _json(value: Any) -> str:
    return escape(json.dumps(value, indent=2, ensure_ascii=False))


def _operation_html(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<div class="op" id="{escape(op["operationId"])}">',
        f'<span class="m {method}">{method}</span> <code>{escape(path)}</code> — {escape(op.get("summary", ""))}',
    ]
    if op.get("description"):
        parts.append(f"<p>{escape(op['description'])}</p>")
    if op.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td><td><code>{_json(p.get('schema', {}))}</code></td></tr>"
            for p in op["parameters"]
        )
        parts.append(f"<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>{rows}</table>")
    if "requestBody" in op:
        body = op["requestBody"]
        parts.append(f"<p>Body ({'required' if body.get('required') else 'optional'}):</p><pre>{_json(body['content'])}</pre>")
    rows = "".join(
        f"<tr><td>{escape(status)}</td><td>{escape(r['description'])}</td>"
        f"<td>{escape(', '.join(r.get('headers', {})))}</td></tr>"
        for status, r in op["responses"].items()
    )
    parts.append(f"<table><tr><th>status</th><th>meaning</th><th>headers</th></tr>{rows}</table></div>")
    return "".join(parts)


def render_docs(spec: dict[str, Any]) -> str:
    """Return the document as one self-contained HTML page."""
    info = spec["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info['title'])} — API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])}</h1><p>version {escape(info['version'])} · OpenAPI "
        f"{escape(spec['openapi'])} · <a href=\"openapi.json\">openapi.json</a></p>",
        f"<p>{escape(info.get('description', ''))}</p><h2>Operations</h2>",
    ]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                parts.append(_operation_html(path, method, op))
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        parts.append(f'<h3 id="schema-{escape(name)}">{escape(name)}</h3><pre>{_json(schema)}</pre>')
    parts.append("</body></html>")
    return "".join(parts)


@bp.get("/docs")
def docs() -> Response:
    """Return a page that documents every operation, from the OpenAPI document."""
    page = render_docs(spec_of(current_app, current_registry().version))
    return Response(page, mimetype="text/html")
