"""``GET /docs``: Swagger UI from the ``swagger-ui-bundle`` package, its files served under ``/docs/assets``,
so that the API's page works offline and no script from elsewhere runs on this origin (FastAPI's default
/docs loads Swagger UI from a CDN; its /redoc too, which is not served).

The package ships Swagger UI 4, which renders OpenAPI 3.0 only: the page reads ``/docs/openapi.json``, this
server's 3.1 schema (``/openapi.json``, the contract) written as 3.0 by :func:`as_openapi_30`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from swagger_ui_bundle import swagger_ui_path

from progress_stream.server.page import PAGE_HEADERS, policy

SWAGGER_UI_DIR = str(swagger_ui_path)
SWAGGER_UI_URL = "/docs/assets"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

docs_router = APIRouter(include_in_schema=False)


def script_hash(script: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"


@docs_router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI from this server alone; its one inline script (the UI's settings) is allowed by its hash."""
    root = request.scope.get("root_path", "")
    html = get_swagger_ui_html(
        openapi_url=f"{root}/docs/openapi.json",
        title=f"{request.app.title}: API",
        swagger_js_url=f"{root}{SWAGGER_UI_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_UI_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{SWAGGER_UI_URL}/favicon-32x32.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the online validator
    ).body.decode()
    hashes = [script_hash(script) for script in INLINE_SCRIPT.findall(html)]
    return HTMLResponse(html, headers={**PAGE_HEADERS, "Content-Security-Policy": policy(*hashes)})


@docs_router.get("/docs/openapi.json")
async def docs_schema(request: Request) -> JSONResponse:
    return JSONResponse(as_openapi_30(request.app.openapi()), headers=PAGE_HEADERS)


def as_openapi_30(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (OpenAPI 3.1, as FastAPI and pydantic write it) as OpenAPI 3.0.3: a ``null`` alternative
    becomes ``nullable``, ``const`` a one-value ``enum``, a list of ``examples`` its first ``example``, a
    numeric exclusive bound a bound with the flag. Only for display: ``/openapi.json`` stays the contract."""
    out = schema_30(schema)
    out["openapi"] = "3.0.3"
    info = out.get("info", {})
    if "summary" in info:  # 3.1 only
        summary = info.pop("summary")
        info["description"] = f"{summary}\n\n{info['description']}" if info.get("description") else summary
    return out


def schema_30(node: Any) -> Any:
    if isinstance(node, list):
        return [schema_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: schema_30(value) for key, value in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [option for option in options if option != {"type": "null"}]
            del node[key]
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            elif len(rest) == 1:
                node["allOf"] = rest  # a $ref takes no siblings in 3.0
            else:
                node[key] = rest
            node["nullable"] = True
    kinds = node.get("type")
    if isinstance(kinds, list):
        others = [kind for kind in kinds if kind != "null"]
        if len(others) < len(kinds):
            node["nullable"] = True
        node["type"] = others[0] if len(others) == 1 else others
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("examples"), list):
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = value
            node[bound] = True
    return node
