"""The web page: ``GET /`` serves the board and the demo (plain HTML, CSS and JavaScript modules from
``server/web/``, nothing loaded from elsewhere); the demo pack is served under ``/demo``. Every page and file
carries :data:`PAGE_HEADERS` (a strict Content-Security-Policy, nosniff)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from progress_stream.contract.errors import RouteNotFound

PAGE_DIR = Path(__file__).with_name("web")

page_router = APIRouter(tags=["page"])


def policy(*scripts: str) -> str:
    """The pages' Content-Security-Policy: their own scripts (and ``scripts``, e.g. a hash), styles and
    connections only (``connect-src 'self'`` covers fetch, the event stream and ``ws:``/``wss:`` to this host),
    no inline script or style, no plugins, no foreign frames."""
    script_src = " ".join(("'self'", *scripts))
    return (
        f"default-src 'none'; script-src {script_src}; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
    )


PAGE_HEADERS = {"Content-Security-Policy": policy(), "X-Content-Type-Options": "nosniff"}


def has_pack(demo_dir: Path) -> bool:
    """Whether ``demo_dir`` holds a demo pack (``progress demo-pack`` writes its ``index.json`` last)."""
    return (demo_dir / "index.json").is_file()


@cache
def page_html() -> str:
    return (PAGE_DIR / "index.html").read_text()


@page_router.get("/", response_class=HTMLResponse, summary="The web page: live board and demo")
async def page(request: Request) -> HTMLResponse:
    """The page, told whether this server has a demo pack (so that it never asks for one that is not there)."""
    demo = "available" if has_pack(request.app.state.services.settings.demo_dir) else "absent"
    return HTMLResponse(page_html().replace('data-demo=""', f'data-demo="{demo}"', 1), headers=PAGE_HEADERS)


class PageFiles(StaticFiles):
    """The page's files (``/static``), each with the page's headers."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


class DemoFiles(PageFiles):
    """The demo pack's files. A server started without a pack (``progress serve --model my.onnx``, no
    ``models/demo``) answers 404 in the error shape, where Starlette would answer 500 for the missing folder."""

    def __init__(self, directory: Path):
        super().__init__(directory=directory, check_dir=False)
        self.pack = directory

    async def check_config(self) -> None:
        """The folder may be missing, or appear later (a pack built while the server runs): checked per request."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not has_pack(self.pack):
            raise RouteNotFound("this server has no demo pack (progress demo-pack writes one)")
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code == 404:
                raise RouteNotFound("no such file in the demo pack") from None
            raise
