"""The web page in a real headless Chromium (Debian's, driven by Playwright) against real servers.

Screenshots go to ``test-artifacts/web/`` (not committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from progress_stream.client import StreamSession
from progress_stream.contract.replies import ErrorReply
from progress_stream.server.process import ServerProcess
from progress_stream.training.demo_pack import write_demo_pack

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DIM = 16


@pytest.fixture(scope="module")
def demo_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_pack(tiny_data / "annotations.json", tiny_data / "features", out, count=2)
    return out


@pytest.fixture(scope="module")
def web_server(tiny_model: Path, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("web") / "server.log"
    with ServerProcess(tiny_model, log, demo_dir=demo_dir, max_streams=10_100) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page with every console error, page error, failed request and foreign request recorded."""

    def __init__(self, browser: Browser, server: ServerProcess, path: str = "/"):
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 720})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        self.page.on(
            "request",
            lambda r: r.url.startswith((server.url, server.ws_url, "data:")) or self.problems.append(f"left: {r.url}"),
        )
        self.page.goto(f"{server.url}{path}")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png")

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def watched(browser: Browser, web_server: ServerProcess) -> Iterator[Watched]:
    page = Watched(browser, web_server)
    yield page
    page.close()


def board_row(page: Page, stream_id: str) -> dict | None:
    return page.evaluate("id => window.progressBoard.rows.get(id) ?? null", stream_id)


def stateless(server: ServerProcess, frames: np.ndarray, field: str = "progress") -> np.ndarray:
    res = httpx.post(f"{server.url}/v1/progress", json={"embeddings": frames.tolist()})
    return np.array(res.json()[field], np.float32)


def test_the_board_shows_streams_within_a_second_and_drops_deleted_ones(watched, web_server):
    page = watched.page
    page.wait_for_selector("#status:has-text('live')")
    rng = np.random.default_rng(0)
    answered = {}
    for i in range(3):
        with StreamSession(web_server.url, stream_id=f"station-{i}") as s:
            answered[s.stream_id] = float(s.send(rng.standard_normal((4, DIM)).astype(np.float32)).progress[-1])
    page.wait_for_function(
        "ids => ids.every(id => window.progressBoard.rows.get(id)?.processed_seq === 4)",
        arg=list(answered),
        timeout=1000,
    )
    for sid, progress in answered.items():
        assert board_row(page, sid)["progress"] == pytest.approx(progress, abs=1e-6)
        assert page.locator(f'[data-id="{sid}"] .bar b').inner_text() == f"{progress:.3f}"
    watched.shot("board")
    httpx.delete(f"{web_server.url}/v1/streams/station-1")
    page.wait_for_function("() => !window.progressBoard.rows.has('station-1')", timeout=1000)
    assert page.locator('[data-id="station-1"]').count() == 0
    page.select_option("#sort", "progress")
    first = max(answered, key=lambda sid: answered[sid] if sid != "station-1" else -1)
    page.wait_for_function("id => document.querySelector('#rows .row:not([hidden])')?.dataset.id === id", arg=first)
    page.fill("#filter", "station-2")
    page.wait_for_function("() => document.getElementById('count').textContent === '1'", timeout=1000)
    assert watched.problems == []


def test_the_demo_plots_exactly_what_the_server_answers(watched, web_server, demo_dir):
    page = watched.page
    page.wait_for_selector("#action option", state="attached")
    page.fill("#fps", "240")
    page.click("#start")
    page.wait_for_function("() => window.progressDemo.state.done || window.progressDemo.state.error", timeout=20_000)
    state = page.evaluate("() => window.progressDemo.state")
    assert state["error"] is None
    action = json.loads((demo_dir / "index.json").read_text())["actions"][0]
    frames = np.load(demo_dir / action["file"])
    assert len(state["predicted"]) == len(frames) and state["truth"] == pytest.approx(action["truth"])
    np.testing.assert_allclose(state["predicted"], stateless(web_server, frames), atol=1e-6)
    # the band under the curve and the time to finish, in seconds at the demo's 240 frames/s
    np.testing.assert_allclose(state["band"], stateless(web_server, frames, "band"), atol=1e-6)
    remaining = stateless(web_server, frames, "remaining_frames")
    np.testing.assert_allclose(state["remaining"], remaining / 240, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["remainingBand"], stateless(web_server, frames, "remaining_band") / 240, rtol=1e-5)
    assert page.text_content("#finish").startswith(f"Time to finish: {remaining[-1] / 240:.1f} s (")
    watched.shot("demo")
    assert watched.problems == []


def test_a_dropped_npy_file_streams(watched, web_server, tmp_path):
    frames = np.random.default_rng(1).standard_normal((12, DIM)).astype(np.float32)
    path = tmp_path / "mine.npy"
    np.save(path, frames)
    page = watched.page
    page.wait_for_selector("#status:has-text('live')")
    page.set_input_files("#file", str(path))
    page.wait_for_function("() => window.progressDemo.state.done || window.progressDemo.state.error", timeout=20_000)
    state = page.evaluate("() => window.progressDemo.state")
    assert state["name"] == "mine.npy" and state["error"] is None
    np.testing.assert_allclose(state["predicted"], stateless(web_server, frames), atol=1e-6)
    dropped = np.random.default_rng(2).standard_normal((9, DIM)).astype(np.float32)
    np.save(tmp_path / "dropped.npy", dropped)
    page.evaluate(
        """bytes => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.npy"));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
        }""",
        list((tmp_path / "dropped.npy").read_bytes()),
    )
    page.wait_for_function("() => window.progressDemo.state.name === 'dropped.npy' && window.progressDemo.state.done")
    np.testing.assert_allclose(
        page.evaluate("() => window.progressDemo.state.predicted"), stateless(web_server, dropped)
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, DIM + 1), np.float32))
    page.set_input_files("#file", str(wrong))
    page.wait_for_selector(f"#demo-status.error:has-text('{DIM + 1} numbers per frame')")
    assert watched.problems == []


def test_ten_thousand_streams_render_only_the_visible_rows(watched, web_server):
    async def create_all() -> None:
        # idle connections expire before the server's 5 s keep-alive, so none is reused as it closes
        limits = httpx.Limits(keepalive_expiry=1.0)
        async with httpx.AsyncClient(base_url=web_server.url, limits=limits) as client:
            for start in range(0, 10_000, 200):
                await asyncio.gather(*(client.put(f"/v1/streams/many-{i:05d}") for i in range(start, start + 200)))

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        pool.submit(asyncio.run, create_all()).result()
    page = watched.page
    page.fill("#filter", "many-")
    page.wait_for_function("() => document.getElementById('count').textContent === '10000'", timeout=5000)
    assert page.locator("#rows .row:not([hidden])").count() < 60
    page.evaluate("() => { const rows = document.getElementById('rows'); rows.scrollTop = rows.scrollHeight; }")
    page.wait_for_selector('[data-id="many-09999"]', timeout=2000)
    assert watched.problems == []


def test_with_an_api_key_the_page_asks_for_it_and_refuses_a_wrong_one(browser, tiny_model, demo_dir, tmp_path):
    with ServerProcess(tiny_model, tmp_path / "log", api_key="s3cret", demo_dir=demo_dir) as srv:
        watched = Watched(browser, srv)
        page = watched.page
        page.wait_for_selector("#key-form:not([hidden])")
        assert "needs an API key" in page.inner_text("#key-message")
        page.fill("#key", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-message:has-text('refused')")
        watched.shot("api-key-refused")
        page.fill("#key", "s3cret")
        page.click("#key-form button")
        page.wait_for_selector("#key-form", state="hidden")
        page.wait_for_selector("#status:has-text('live')")
        page.fill("#fps", "240")
        page.click("#start")  # the WebSocket carries the key as a subprotocol
        page.wait_for_function(
            "() => window.progressDemo.state.done || window.progressDemo.state.error", timeout=20_000
        )
        assert page.evaluate("() => window.progressDemo.state.error") is None
        # the refused key's 401 answers are expected console noise; nothing else may fail
        assert [p for p in watched.problems if "401" not in p] == []
        watched.close()


#: The ids of the rows a user sees on the board (rendered and not hidden), top to bottom.
SHOWN_ROWS = """() => [...document.querySelectorAll('#rows .row')]
    .filter((el) => el.checkVisibility())
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map((el) => el.dataset.id)"""


def test_the_board_shows_the_servers_streams_after_deletes_and_re_creations(browser, tiny_model, demo_dir, tmp_path):
    # a server of its own: the module's server holds the 10,000 streams above, which slow its board down
    with ServerProcess(tiny_model, tmp_path / "log", demo_dir=demo_dir) as web_server:
        watched = Watched(browser, web_server)
        page = watched.page
        page.wait_for_selector("#status:has-text('live')")
        page.fill("#filter", "round-")
        rounds = [
            ({"round-a", "round-b", "round-c", "round-d", "round-e"}, set()),
            (set(), {"round-c"}),
            ({"round-c"}, {"round-a", "round-e"}),  # a deleted id comes back
            ({"round-f"}, {"round-c", "round-b"}),
            ({"round-a", "round-b"}, {"round-d"}),
            (set(), {"round-a", "round-b", "round-f"}),
        ]
        for create, delete in rounds:
            for sid in sorted(create):
                assert httpx.put(f"{web_server.url}/v1/streams/{sid}").status_code in (200, 201)
            for sid in sorted(delete):
                assert httpx.delete(f"{web_server.url}/v1/streams/{sid}").status_code == 204
            listed = httpx.get(f"{web_server.url}/v1/streams", params={"prefix": "round-"}).json()
            expected = sorted(s["stream_id"] for s in listed["streams"])
            same = f"ids => JSON.stringify(({SHOWN_ROWS})()) === JSON.stringify(ids)"
            with contextlib.suppress(PlaywrightTimeout):  # the assertion below says what differs
                page.wait_for_function(same, arg=expected, timeout=5000)
            assert page.evaluate(SHOWN_ROWS) == expected, f"after creating {create} and deleting {delete}"
            assert page.inner_text("#count") == str(listed["total"])
        watched.shot("board-after-deletes")
        assert watched.problems == []
        watched.close()


@pytest.mark.parametrize("pack", ["missing", "empty"])
def test_without_a_demo_pack_the_page_says_so_and_dropped_files_still_stream(browser, tiny_model, tmp_path, pack):
    demo = tmp_path / "demo"
    if pack == "empty":
        demo.mkdir()
    with ServerProcess(tiny_model, tmp_path / "log", demo_dir=demo) as srv:
        for path in ("/demo/index.json", "/demo/action-0.npy", "/demo/"):
            res = httpx.get(f"{srv.url}{path}")
            assert res.status_code == 404, path
            assert ErrorReply.model_validate_json(res.content).error.code == "not_found"
            assert "demo pack" in res.json()["error"]["message"]
        watched = Watched(browser, srv)
        page = watched.page
        page.wait_for_selector("#status:has-text('live')")
        page.wait_for_selector("#demo-status:has-text('not available for this model')")
        assert page.is_disabled("#start")
        frames = np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32)
        np.save(tmp_path / "mine.npy", frames)
        page.set_input_files("#file", str(tmp_path / "mine.npy"))
        page.wait_for_function("() => window.progressDemo.state.done || window.progressDemo.state.error")
        np.testing.assert_allclose(page.evaluate("() => window.progressDemo.state.predicted"), stateless(srv, frames))
        watched.shot(f"demo-pack-{pack}")
        assert watched.problems == []
        watched.close()


def csp(res: httpx.Response) -> dict[str, list[str]]:
    """The Content-Security-Policy header as directive → sources."""
    parts = (d.split() for d in res.headers["content-security-policy"].split(";") if d.strip())
    return {name: sources for name, *sources in parts}


def test_the_page_and_its_files_carry_a_strict_csp_and_nosniff(web_server):
    for path in ("/", "/static/app.js", "/static/style.css", "/demo/index.json"):
        res = httpx.get(f"{web_server.url}{path}")
        assert res.status_code == 200, path
        assert res.headers["x-content-type-options"] == "nosniff", path
        policy = csp(res)
        assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'self'"], path
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"], path
        assert policy["connect-src"] == ["'self'"], path  # fetch, the event stream and ws: to this host


def test_the_page_works_under_its_csp_and_the_csp_holds(watched, web_server):
    page = watched.page
    page.wait_for_selector("#status:has-text('live')")  # the event stream (fetch) under connect-src 'self'
    assert page.evaluate(  # a WebSocket to the same host under connect-src 'self'
        """() => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/v1/streams/csp-check/ws`, ["progress.v1"]);
            ws.onopen = () => { ws.close(); resolve(true); };
            ws.onerror = () => resolve(false);
        })"""
    )
    assert watched.problems == []
    blocked = page.evaluate(
        """() => new Promise((resolve) => {
            document.addEventListener("securitypolicyviolation", (e) => resolve(e.violatedDirective));
            setTimeout(() => resolve("no violation"), 5000);
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.head.append(script);
        })"""
    )
    assert blocked.startswith("script-src"), blocked
    assert page.evaluate("() => window.injected") is None
    assert all("Content Security Policy" in p for p in watched.problems)  # only the refused inline script


def test_the_api_docs_render_from_this_server_alone(browser, web_server):
    """/docs is Swagger UI from the package (swagger-ui-bundle), not from a CDN: it works offline, and
    no foreign script runs on this origin."""
    watched = Watched(browser, web_server, "/docs")
    page = watched.page
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/streams']", timeout=10_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map((el) => el.dataset.path)")
    assert {"/v1/streams", "/v1/streams/{stream_id}", "/v1/progress"} <= set(paths)
    page.click(".opblock-summary-path[data-path='/healthz']")  # "Try it out" calls the API under the policy
    page.click(".opblock.is-open .try-out__btn")
    page.click(".opblock.is-open .execute")
    page.wait_for_selector(".opblock.is-open .live-responses-table .response-col_status:has-text('200')")
    watched.shot("docs")
    assert watched.problems == []
    watched.close()
    res = httpx.get(f"{web_server.url}/docs")
    assert res.headers["x-content-type-options"] == "nosniff"
    policy = csp(res)
    assert policy["frame-ancestors"] == ["'self'"] and "'unsafe-inline'" not in policy["script-src"]
    assert not any(source.startswith(("http:", "https:")) for sources in policy.values() for source in sources)
    assert httpx.get(f"{web_server.url}/redoc").status_code == 404  # ReDoc would come from a CDN: not served
