"""The web page: ``GET /`` serves the board and the demo (plain HTML, CSS and JavaScript modules from
``service/web/``, nothing loaded from elsewhere); the demo pack is served under ``/demo``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

PAGE_DIR = Path(__file__).with_name("web")

page_router = APIRouter(tags=["page"])


@page_router.get("/", response_class=FileResponse, summary="The web page: live board and demo")
async def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html")
