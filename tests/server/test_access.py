"""Who may talk to the server, against real servers (and a real ``redis-server`` where the store is involved).

Items 6-9 of the access issue: the Host a request names (DNS rebinding), streams that belong to the key that
made them, keys that cannot be empty, an Origin that is not a URL, ids that end in a newline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time

import httpx
import numpy as np
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from progress_stream.client import SyncGateway
from progress_stream.client.http import ServerError
from progress_stream.contract.wire import STREAM_ID_RULE, bearer_subprotocol
from progress_stream.engine.durability.store import (
    BAD_KEY,
    FURTHER_ALONG,
    NOT_OWNER,
    PREFIX,
    WRITTEN,
    RedisStore,
    StreamState,
)
from progress_stream.engine.streams import StreamTable, Tenant
from progress_stream.server.board import Board
from progress_stream.server.process import RedisProcess, ServerProcess
from tests.conftest import frames
from tests.engine.durability.test_state_files import serve_once
from tests.engine.durability.test_store_faults import stored_fields
from tests.server import test_page
from tests.server.test_edge import raw_exchange, status_and_body
from tests.server.test_operations import scrape
from tests.server.test_page import Watched

FOREIGN = "evil.example"
browser, demo_dir = test_page.browser, test_page.demo_dir  # the page tests' fixtures: Chromium, a demo pack


def handshake(server: ServerProcess, path: str, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, dict]:
    """A WebSocket handshake sent byte by byte as a browser would (any Host, Origin, subprotocols): the
    status and JSON body of its answer (0 and {} when none came within ``timeout``)."""
    fields = {
        "Host": f"127.0.0.1:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    answer, _ = raw_exchange(server.port, head.encode(), (), timeout=timeout)
    if not answer:
        return 0, {}
    return status_and_body(answer)


def first_event(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    """The status of ``GET /v1/board/events`` and its first event's data (its error body if refused)."""
    with httpx.stream("GET", f"{url}/v1/board/events", headers=headers, timeout=10) as res:
        if res.status_code != 200:
            res.read()
            return res.status_code, res.json()
        buffer = b""
        for chunk in res.iter_bytes():
            buffer += chunk
            if b"\n\n" in buffer:
                break
    data = next(line for line in buffer.split(b"\n") if line.startswith(b"data: "))
    return 200, orjson.loads(data[6:])


@pytest.fixture(scope="module")
def loopback(plane, tiny_model, tmp_path_factory):
    """A server on 127.0.0.1 with no key and no setting about hosts: the defaults."""
    log = tmp_path_factory.mktemp("loopback") / "server.log"
    with ServerProcess(tiny_model, log, ws_plane=plane, max_frames_per_message=16, retained_window=32) as srv:
        yield srv


# --- 6. DNS rebinding: the Host is checked -----------------------------------------------------------------


def test_6_a_page_rebound_to_loopback_is_refused_everywhere(loopback):
    """A page on evil.example that rebinds its name to 127.0.0.1 sends Host and Origin evil.example: its
    Origin matches its Host, so only a check of the Host itself stops it."""
    url, port = loopback.url, loopback.port
    assert httpx.put(f"{url}/v1/streams/victim").status_code in (200, 201)
    rebound = {"Host": f"{FOREIGN}:{port}", "Origin": f"http://{FOREIGN}:{port}"}
    attempts = [
        httpx.get(f"{url}/v1/streams", headers=rebound),
        httpx.get(f"{url}/v1/streams/victim", headers=rebound),
        httpx.delete(f"{url}/v1/streams/victim", headers=rebound),
        httpx.post(f"{url}/v1/streams/victim/frames", headers=rebound, json={"seq": 0, "embeddings": [[0.1] * 16]}),
        httpx.post(f"{url}/v1/streams", headers=rebound, json={}),
        httpx.get(f"{url}/", headers=rebound),
    ]
    for res in attempts:
        assert res.status_code == 421, (res.request.method, res.request.url, res.status_code)
        assert res.json()["error"]["code"] == "wrong_host"
    assert first_event(url, rebound)[0] == 421
    status, body = handshake(loopback, "/v1/streams/victim/ws", rebound)
    assert status == 421 and body["error"]["code"] == "wrong_host"
    # nothing happened to the stream
    assert httpx.get(f"{url}/v1/streams/victim").json()["next_seq"] == 0


def test_6_the_loopback_names_pass_with_any_port(loopback):
    for host in ("localhost", f"localhost:{loopback.port}", "127.0.0.1:1", f"[::1]:{loopback.port}", "[::1]"):
        res = httpx.get(f"{loopback.url}/v1/streams", headers={"Host": host})
        assert res.status_code == 200, host
    status, _ = handshake(loopback, "/v1/streams/named/ws", {"Host": f"localhost:{loopback.port}"})
    assert status == 101


def test_6_allowed_hosts_names_the_hosts_a_proxy_forwards(tiny_model, tmp_path):
    with ServerProcess(
        tiny_model, tmp_path / "log", allowed_hosts="progress.example, .internal.example,127.0.0.1"
    ) as srv:
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "progress.example:443"}).status_code == 200
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "a.internal.example"}).status_code == 200
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "localhost"}).status_code == 421
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "xinternal.example"}).status_code == 421


def test_6_a_malformed_host_is_refused(loopback):
    for host in ("[", "localhost:port:8000", "local host"):
        res = httpx.get(f"{loopback.url}/v1/streams", headers={"Host": host})
        assert res.status_code in (400, 421), host
        assert res.json()["error"]["code"] == "wrong_host"


# --- 9a. An Origin that is not a URL ---------------------------------------------------------------------


NOT_URLS = ["http://[", "http://[::1", "http://a:b:c"]


@pytest.mark.parametrize("origin", NOT_URLS)
def test_9a_an_origin_that_is_not_a_url_is_refused_in_the_error_shape(loopback, origin):
    res = httpx.get(f"{loopback.url}/v1/streams", headers={"Origin": origin})
    assert res.status_code == 403
    assert res.json()["error"]["code"] == "forbidden_origin"


@pytest.mark.parametrize("origin", NOT_URLS)
def test_9a_a_handshake_with_an_origin_that_is_not_a_url_is_refused_at_once(loopback, origin):
    started = time.monotonic()
    status, body = handshake(loopback, "/v1/streams/o/ws", {"Origin": origin}, timeout=5)
    assert (status, body.get("error", {}).get("code")) == (403, "forbidden_origin")
    assert time.monotonic() - started < 4  # answered, not left to picows' 10 s handshake timeout
    assert "Task exception was never retrieved" not in loopback.log.read_text()


# --- 9b. Ids that end in a newline -----------------------------------------------------------------------

BAD_ID = {"error": {"code": "invalid_input", "message": f"stream_id must be {STREAM_ID_RULE}", "field": "stream_id"}}


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("PUT", "", None), ("GET", "", None), ("DELETE", "", None), ("POST", "/frames", {"seq": 0, "embeddings": []})],
)
@pytest.mark.parametrize("encoded", ["victim%0A", "victim%0D%0A", "victim%0A%0A"])
def test_9b_a_path_id_ending_in_a_newline_is_invalid(loopback, method, suffix, body, encoded):
    res = httpx.request(method, f"{loopback.url}/v1/streams/{encoded}{suffix}", json=body)
    assert res.status_code == 422 and res.json() == BAD_ID
    listed = httpx.get(f"{loopback.url}/v1/streams", params={"prefix": "victim"}).json()["streams"]
    assert all(row["stream_id"] == "victim" for row in listed)


def test_9b_a_socket_id_ending_in_a_newline_is_invalid(loopback):
    status, body = handshake(loopback, "/v1/streams/victim%0A/ws", {})
    assert (status, body) == (422, BAD_ID)
    assert "victim\n" not in [r["stream_id"] for r in httpx.get(f"{loopback.url}/v1/streams").json()["streams"]]


def test_9b_a_body_id_or_a_prefix_ending_in_a_newline_is_invalid(loopback):
    res = httpx.post(f"{loopback.url}/v1/streams", json={"stream_id": "victim\n"})
    assert res.status_code == 422 and res.json()["error"]["field"] == "stream_id"
    res = httpx.get(f"{loopback.url}/v1/streams", params={"prefix": "victim\n"})
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_input"


# --- 8. An empty key does not turn authentication off ----------------------------------------------------


def assert_refused_naming(res: subprocess.CompletedProcess, setting: str) -> None:
    """Exit code 2 and one line that names the setting; no traceback."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {setting}: "), lines[-1]
    assert "s3cret" not in res.stderr


@pytest.mark.parametrize("empty", ["", "   "])
def test_8_an_empty_api_key_refuses_to_start(tiny_model, empty):
    assert_refused_naming(serve_once(tiny_model, api_key=empty), "PROGRESS_API_KEY")


def test_8_a_malformed_setting_refuses_to_start_naming_it(tiny_model):
    assert_refused_naming(serve_once(tiny_model, allowed_hosts="a b"), "PROGRESS_ALLOWED_HOSTS")
    assert_refused_naming(serve_once(tiny_model, max_streams="many"), "PROGRESS_MAX_STREAMS")


def test_8_a_server_on_every_interface_without_a_key_warns_at_start(tiny_model, tmp_path, loopback):
    with ServerProcess(tiny_model, tmp_path / "log", host="0.0.0.0") as srv:
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        warnings = [line for line in srv.log.read_text().splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "PROGRESS_API_KEY" in warnings[0], warnings
    assert not [line for line in loopback.log.read_text().splitlines() if line.startswith("WARNING")]
    with ServerProcess(tiny_model, tmp_path / "keyed.log", host="0.0.0.0", api_key="s3cret") as srv:
        assert not [line for line in srv.log.read_text().splitlines() if "PROGRESS_API_KEY" in line]


# --- 7. A stream belongs to the key that created it ------------------------------------------------------

KEYS = {"alice": "alice-key-1", "bob": "bob:key:2"}  # a key may hold ':' (a pair splits at its first)
ADMIN_KEY = "root-key-0"
TENANTS = {"api_keys": ",".join(f"{name}:{key}" for name, key in KEYS.items()), "admin_key": ADMIN_KEY}


def as_(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY if who == 'admin' else KEYS[who]}"}


def listed(url: str, who: str, **params: object) -> list[str]:
    res = httpx.get(f"{url}/v1/streams", headers=as_(who), params={"limit": 1000, **params})
    assert res.status_code == 200, res.text
    page = res.json()
    assert page["total"] == len(page["streams"])
    return [row["stream_id"] for row in page["streams"]]


def missing_body(url: str, who: str, stream_id: str) -> dict:
    """What ``who`` is answered for ``stream_id`` if it did not exist: asked of an id that never did."""
    never = "never-" + stream_id
    res = httpx.get(f"{url}/v1/streams/{never}", headers=as_(who))
    assert res.status_code == 404
    body = res.json()
    body["error"]["message"] = body["error"]["message"].replace(never, stream_id)
    return body


@pytest.fixture(scope="module")
def tenants(plane, tiny_model, tmp_path_factory):
    """alice, bob and the admin on one server."""
    log = tmp_path_factory.mktemp("tenants") / "server.log"
    with ServerProcess(
        tiny_model, log, ws_plane=plane, max_frames_per_message=16, retained_window=32, **TENANTS
    ) as srv:
        for who in ("alice", "bob"):
            assert httpx.put(f"{srv.url}/v1/streams/{who}-own", headers=as_(who)).status_code == 201
        yield srv


def test_7_another_key_finds_no_stream_where_there_is_one(tenants):
    url = tenants.url
    gone = missing_body(url, "bob", "alice-own")
    body = {"seq": 0, "embeddings": [[0.1] * 16]}
    for res in (
        httpx.get(f"{url}/v1/streams/alice-own", headers=as_("bob")),
        httpx.post(f"{url}/v1/streams/alice-own/frames", headers=as_("bob"), json=body),
        httpx.delete(f"{url}/v1/streams/alice-own", headers=as_("bob")),
    ):
        assert (res.status_code, res.json()) == (404, gone), res.request
    mine = httpx.get(f"{url}/v1/streams/alice-own", headers=as_("alice"))
    assert mine.status_code == 200 and mine.json()["next_seq"] == 0  # bob's frames were not taken
    assert httpx.get(f"{url}/v1/streams/alice-own", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_7_creating_an_id_another_key_holds_is_409_and_says_nothing_of_it(tenants):
    url = tenants.url
    frames_in = httpx.post(
        f"{url}/v1/streams/alice-own/frames", headers=as_("alice"), json={"seq": 0, "embeddings": [[0.1] * 16]}
    )
    assert frames_in.status_code == 200 or frames_in.json()["error"]["code"] == "seq_conflict"
    for res in (
        httpx.put(f"{url}/v1/streams/alice-own", headers=as_("bob")),
        httpx.post(f"{url}/v1/streams", headers=as_("bob"), json={"stream_id": "alice-own"}),
    ):
        assert res.status_code == 409
        assert set(res.json()) == {"error"} and res.json()["error"]["code"] == "stream_id_taken"
        assert "alice" not in res.text.replace("alice-own", "")
    assert httpx.put(f"{url}/v1/streams/alice-own", headers=as_("alice")).status_code == 200  # still idempotent


def test_7_each_key_lists_only_its_own_streams_and_the_admin_all(tenants):
    url = tenants.url
    assert "alice-own" in listed(url, "alice") and "bob-own" not in listed(url, "alice")
    assert "bob-own" in listed(url, "bob") and "alice-own" not in listed(url, "bob")
    assert listed(url, "bob", prefix="alice") == []
    assert {"alice-own", "bob-own"} <= set(listed(url, "admin"))
    status, snapshot = first_event(url, as_("alice"))
    ids = {row["stream_id"] for row in snapshot["rows"]}
    assert status == 200 and "alice-own" in ids and "bob-own" not in ids
    status, snapshot = first_event(url, as_("admin"))
    assert status == 200 and {"alice-own", "bob-own"} <= {row["stream_id"] for row in snapshot["rows"]}


def test_7_the_admin_sees_and_deletes_every_stream(tenants):
    url = tenants.url
    assert httpx.put(f"{url}/v1/streams/bob-doomed", headers=as_("bob")).status_code == 201
    assert httpx.get(f"{url}/v1/streams/bob-doomed", headers=as_("admin")).status_code == 200
    assert httpx.delete(f"{url}/v1/streams/bob-doomed", headers=as_("admin")).status_code == 204
    assert httpx.get(f"{url}/v1/streams/bob-doomed", headers=as_("bob")).status_code == 404


def test_7_a_socket_of_another_key_is_refused_404_on_both_planes(tenants):
    gone = missing_body(tenants.url, "bob", "alice-own")
    by_header = handshake(tenants, "/v1/streams/alice-own/ws", as_("bob"))
    bearer = f"progress.v1, {bearer_subprotocol(KEYS['bob'])}"  # as the web page offers its key
    by_subprotocol = handshake(tenants, "/v1/streams/alice-own/ws", {"Sec-WebSocket-Protocol": bearer})
    assert by_header == by_subprotocol == (404, gone)


def test_7_a_socket_opened_with_the_pages_subprotocol_belongs_to_its_key(tenants):
    url = tenants.url
    bearer = f"progress.v1, {bearer_subprotocol(KEYS['alice'])}"
    assert handshake(tenants, "/v1/streams/alice-socket/ws", {"Sec-WebSocket-Protocol": bearer})[0] == 101
    assert httpx.get(f"{url}/v1/streams/alice-socket", headers=as_("alice")).status_code == 200
    assert httpx.get(f"{url}/v1/streams/alice-socket", headers=as_("bob")).status_code == 404
    assert handshake(tenants, "/v1/streams/alice-socket/ws", {"Sec-WebSocket-Protocol": bearer})[0] == 101


def test_7_a_key_holds_at_most_its_quota_of_streams_and_the_others_are_unaffected(plane, tiny_model, tmp_path):
    """PROGRESS_MAX_STREAMS_PER_KEY: one key cannot fill the table for the others."""
    with ServerProcess(tiny_model, tmp_path / "log", ws_plane=plane, max_streams_per_key=2, **TENANTS) as srv:
        url = srv.url
        assert [httpx.put(f"{url}/v1/streams/a-{i}", headers=as_("alice")).status_code for i in (1, 2)] == [201] * 2
        refused = [
            httpx.put(f"{url}/v1/streams/a-3", headers=as_("alice")),
            httpx.post(f"{url}/v1/streams", headers=as_("alice"), json={}),
        ]
        for res in refused:
            assert res.status_code == 429 and res.headers["retry-after"] == "5"
            assert res.json()["error"]["code"] == "stream_quota"
        status, body = handshake(srv, "/v1/streams/a-3/ws", as_("alice"))
        assert status == 429 and body["error"]["code"] == "stream_quota"

        async def attach() -> list[dict]:
            headers = {**as_("alice"), "Origin": url}
            async with connect(f"ws://127.0.0.1:{srv.port}/v1/ws", additional_headers=headers) as sock:
                await sock.send(orjson.dumps({"attach": ["a-1", "a-4"]}).decode())
                return orjson.loads(await sock.recv())["attached"]

        reopened, over = asyncio.run(attach())
        assert reopened["stream_id"] == "a-1" and reopened["next_seq"] == 0
        assert over["stream_id"] == "a-4" and over["error"]["code"] == "stream_quota"
        with SyncGateway(url.replace("http", "ws"), api_key=KEYS["alice"]) as gw, pytest.raises(ServerError) as exc:
            gw.attach("a-4")
        assert exc.value.status == 429 and exc.value.body["error"]["code"] == "stream_quota"
        assert httpx.put(f"{url}/v1/streams/a-1", headers=as_("alice")).status_code == 200  # its own: reopened
        assert sorted(listed(url, "alice")) == ["a-1", "a-2"]
        assert httpx.put(f"{url}/v1/streams/b-1", headers=as_("bob")).status_code == 201
        assert [httpx.post(f"{url}/v1/streams", headers=as_("admin")).status_code for _ in range(3)] == [201] * 3
        assert httpx.delete(f"{url}/v1/streams/a-2", headers=as_("alice")).status_code == 204
        assert httpx.put(f"{url}/v1/streams/a-3", headers=as_("alice")).status_code == 201


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"api_keys": ""}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice:"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice: "}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice"}, "PROGRESS_API_KEYS"),
        ({"api_keys": ":s3cret"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "al ice:s3cret"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice:s3cret,"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice:s3cret,alice:other"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice:s3cret,bob:s3cret"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "admin:s3cret"}, "PROGRESS_API_KEYS"),
        ({"api_keys": "alice:s3cret", "admin_key": "s3cret"}, "PROGRESS_API_KEYS"),
        ({"api_key": "s3cret", "api_keys": "default:other"}, "PROGRESS_API_KEYS"),
        ({"admin_key": ""}, "PROGRESS_ADMIN_KEY"),
    ],
)
def test_8_an_empty_key_or_a_malformed_pair_refuses_to_start(tiny_model, settings, variable):
    assert_refused_naming(serve_once(tiny_model, **settings), variable)


# --- 7. ... and stays its owner's across restarts and replicas -------------------------------------------

ALL_KEYS = [*KEYS.values(), ADMIN_KEY]


def holds_no_key(data: bytes) -> bool:
    """No key in ``data``, as UTF-8 or as numpy's UTF-32 strings."""
    return not any(k.encode() in data or k.encode("utf-32-le") in data for k in ALL_KEYS)


def test_7_ownership_survives_a_restart_from_the_state_file(tiny_model, tmp_path):
    state = tmp_path / "streams.state"
    settings = {**TENANTS, "state_file": state, "snapshot_interval_s": 60}
    with ServerProcess(tiny_model, tmp_path / "a.log", **settings) as srv:
        assert httpx.put(f"{srv.url}/v1/streams/alice-kept", headers=as_("alice")).status_code == 201
        body = {"seq": 0, "embeddings": frames(np.random.default_rng(7), 3).tolist()}
        assert httpx.post(f"{srv.url}/v1/streams/alice-kept/frames", headers=as_("alice"), json=body).is_success
        assert httpx.put(f"{srv.url}/v1/streams/bob-kept", headers=as_("bob")).status_code == 201
        assert srv.terminate() in (0, -signal.SIGTERM)
    with np.load(state) as data:
        assert dict(zip(data["ids"].tolist(), data["owners"].tolist(), strict=True)) == {
            "alice-kept": "alice",
            "bob-kept": "bob",
        }
    assert holds_no_key(state.read_bytes())
    with ServerProcess(tiny_model, tmp_path / "b.log", **settings) as again:
        assert httpx.get(f"{again.url}/v1/streams/alice-kept", headers=as_("alice")).json()["next_seq"] == 3
        res = httpx.get(f"{again.url}/v1/streams/alice-kept", headers=as_("bob"))
        assert (res.status_code, res.json()) == (404, missing_body(again.url, "bob", "alice-kept"))
        assert listed(again.url, "bob") == ["bob-kept"]
        assert listed(again.url, "admin") == ["alice-kept", "bob-kept"]


def test_7_a_state_file_from_before_owners_restores_to_the_default_tenant(tiny_model, tmp_path):
    """A version-2 file (no owners) is read, not refused: its streams are the tenant ``default``'s, the one
    PROGRESS_API_KEY is (a server with no key sees them all)."""
    state = tmp_path / "streams.state"
    with ServerProcess(tiny_model, tmp_path / "a.log", state_file=state, snapshot_interval_s=60) as srv:
        assert httpx.put(f"{srv.url}/v1/streams/older").status_code == 201
        assert srv.terminate() in (0, -signal.SIGTERM)
    with np.load(state) as data:
        arrays = {k: data[k] for k in data.files if k not in ("meta", "owners")}
        meta = {**json.loads(str(data["meta"])), "version": 2}
    with open(state, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    keys = {"api_key": "s3cret", "api_keys": f"alice:{KEYS['alice']}", "state_file": state}
    with ServerProcess(tiny_model, tmp_path / "b.log", **keys) as again:
        assert httpx.get(f"{again.url}/v1/streams/older", headers={"Authorization": "Bearer s3cret"}).is_success
        assert httpx.get(f"{again.url}/v1/streams/older", headers=as_("alice")).status_code == 404


@pytest.fixture
def store():
    server = RedisProcess().start()
    yield server
    server.stop()


def test_7_ownership_survives_a_takeover_through_the_store(tiny_model, tmp_path, store):
    settings = {**TENANTS, "state_url": store.url, "snapshot_interval_s": 0.2}
    with ServerProcess(tiny_model, tmp_path / "a.log", **settings) as a:
        for sid in ("alice-moved", "alice-stored"):
            assert httpx.put(f"{a.url}/v1/streams/{sid}", headers=as_("alice")).status_code == 201
        body = {"seq": 0, "embeddings": frames(np.random.default_rng(8), 3).tolist()}
        assert httpx.post(f"{a.url}/v1/streams/alice-moved/frames", headers=as_("alice"), json=body).is_success
        assert a.terminate() in (0, -signal.SIGTERM)  # its final write: every stream, in the store
    client = redis.Redis(port=store.port)
    stored = client.hgetall(PREFIX + "alice-moved")
    assert stored[b"owner"] == b"alice" and stored[b"seq"] == b"3"
    assert all(holds_no_key(value) for value in stored.values())
    with ServerProcess(tiny_model, tmp_path / "b.log", **settings) as b:
        gone = missing_body(b.url, "bob", "alice-stored")
        res = httpx.delete(f"{b.url}/v1/streams/alice-stored", headers=as_("bob"))  # held nowhere but the store
        assert (res.status_code, res.json()) == (404, gone)
        assert client.exists(PREFIX + "alice-stored")
        res = httpx.get(f"{b.url}/v1/streams/alice-moved", headers=as_("bob"))  # taken over, and not bob's
        assert (res.status_code, res.json()) == (404, missing_body(b.url, "bob", "alice-moved"))
        assert httpx.put(f"{b.url}/v1/streams/alice-moved", headers=as_("bob")).status_code == 409
        assert handshake(b, "/v1/streams/alice-stored/ws", as_("bob"))[0] == 404
        assert httpx.get(f"{b.url}/v1/streams/alice-moved", headers=as_("alice")).json()["next_seq"] == 3
        assert listed(b.url, "bob") == []
        assert httpx.delete(f"{b.url}/v1/streams/alice-stored", headers=as_("admin")).status_code == 204
        assert not client.exists(PREFIX + "alice-stored")


def test_7_the_store_never_hands_a_stream_to_another_owner(runtime, store):
    """A write for another owner (two replicas racing to create one id for two keys) is refused by the
    store itself, whatever its seq, with its own outcome; a hash from before owners is the tenant
    'default''s; a bad key is still skipped as one, whoever writes."""
    layout = StreamTable.layout(runtime.hidden_dim, 32)
    rows = {name: np.zeros(items, dtype) for name, (dtype, items) in layout.items()}
    client = redis.Redis(port=store.port)

    async def main() -> list[list[int]]:
        writer = RedisStore(store.url, None, runtime.checkpoint, layout, 60)
        try:
            written = [
                await writer.save([StreamState("contested", 0, 0.0, rows, owner="alice")]),
                await writer.save([StreamState("contested", 9, 0.0, rows, owner="bob")]),
                await writer.save([StreamState("contested", 4, 0.0, rows, owner="alice")]),
                await writer.save([StreamState("contested", 2, 0.0, rows, owner="alice")]),  # backwards
            ]
            client.hdel(PREFIX + "contested", "owner")  # as an older replica wrote it
            written.append(await writer.save([StreamState("contested", 5, 0.0, rows, owner="alice")]))
            written.append(await writer.save([StreamState("contested", 6, 0.0, rows)]))
            assert (await writer.load("contested")).owner == "default"
            client.hset(PREFIX + "garbled", mapping={"seq": "three", "owner": "alice"})
            client.set(PREFIX + "typed", "not a hash")
            written.append(
                await writer.save(
                    [
                        StreamState("garbled", 7, 0.0, rows, owner="bob"),  # bad before not-owned
                        StreamState("typed", 7, 0.0, rows, owner="alice"),
                        StreamState("fresh", 1, 0.0, rows, owner="bob"),  # the round's others land
                    ]
                )
            )
            return written
        finally:
            await writer.close()

    assert asyncio.run(main()) == [
        [WRITTEN],
        [NOT_OWNER],
        [WRITTEN],
        [FURTHER_ALONG],
        [NOT_OWNER],
        [WRITTEN],
        [BAD_KEY, BAD_KEY, WRITTEN],
    ]
    assert client.hget(PREFIX + "fresh", "owner") == b"bob"
    assert client.hget(PREFIX + "garbled", "seq") == b"three" and client.get(PREFIX + "typed") == b"not a hash"


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        time.sleep(0.05)


def readiness(url: str) -> dict:
    return httpx.get(f"{url}/readyz").json()


def refused_writes(url: str) -> float:
    return scrape(url).get("progress_store_refused_writes_total", 0.0)


def test_7_a_write_refused_for_another_owner_is_counted_and_never_caught_up(tiny_model, tmp_path, store, runtime):
    """bob's copy of an id whose key became alice's (a race between replicas, or another deployment's key):
    its writes are refused like those of a copy behind, counted, and readyz says partial; the copy held
    is never caught up from alice's state, however far along it is; deleting it leaves alice's key."""
    settings = {**TENANTS, "state_url": store.url, "snapshot_interval_s": 0.2}
    client = redis.Redis(port=store.port)
    with ServerProcess(tiny_model, tmp_path / "a.log", **settings) as a:
        assert httpx.put(f"{a.url}/v1/streams/raced", headers=as_("bob")).status_code == 201
        wait_until(lambda: client.hget(PREFIX + "raced", "owner") == b"bob", "bob's key written")
        before = refused_writes(a.url)
        client.hset(PREFIX + "raced", mapping={**stored_fields(runtime, 50), "owner": "alice"})  # alice won it
        body = {"seq": 60, "embeddings": frames(np.random.default_rng(9), 2).tolist()}
        res = httpx.post(f"{a.url}/v1/streams/raced/frames", headers=as_("bob"), json=body)  # past the copy held
        assert res.status_code == 409 and res.json()["error"]["expected_seq"] == 0, res.text  # not alice's 50
        body["seq"] = 0
        assert httpx.post(f"{a.url}/v1/streams/raced/frames", headers=as_("bob"), json=body).status_code == 200
        unstored = {"ready": True, "durability": "partial", "unstored_streams": 1}
        wait_until(lambda: readiness(a.url) == unstored, f"{unstored} (readyz: {readiness(a.url)})")
        assert refused_writes(a.url) > before
        assert client.hget(PREFIX + "raced", "owner") == b"alice" and client.hget(PREFIX + "raced", "seq") == b"50"
        assert httpx.delete(f"{a.url}/v1/streams/raced", headers=as_("bob")).status_code == 204  # its own copy
        assert client.hget(PREFIX + "raced", "owner") == b"alice"  # not its to delete in the store
        ok = {"ready": True, "durability": "ok", "unstored_streams": 0}
        wait_until(lambda: readiness(a.url) == ok, f"{ok} (readyz: {readiness(a.url)})")
    assert "another owner's" in (tmp_path / "a.log").read_text()


def test_7_an_unreadable_key_is_unreadable_to_its_owner_only(tiny_model, tmp_path, store, runtime):
    """A key that cannot be read answers stream_unreadable to its owner (as far as the key tells) and the
    admin; to another key it answers as any stream not its own, and that key cannot delete it. A key
    that is not a hash has no owner field: it is the tenant 'default''s, so here the admin's to clear."""
    client = redis.Redis(port=store.port)
    client.hset(PREFIX + "alice-garbled", mapping={**stored_fields(runtime, "seven"), "owner": "alice"})
    client.set(PREFIX + "typed", "not a hash")
    settings = {**TENANTS, "state_url": store.url}
    with ServerProcess(tiny_model, tmp_path / "a.log", **settings) as a:
        gone = missing_body(a.url, "bob", "alice-garbled")
        for res in (
            httpx.get(f"{a.url}/v1/streams/alice-garbled", headers=as_("bob")),
            httpx.post(
                f"{a.url}/v1/streams/alice-garbled/frames",
                headers=as_("bob"),
                json={"seq": 0, "embeddings": [[0.1] * 16]},
            ),
            httpx.delete(f"{a.url}/v1/streams/alice-garbled", headers=as_("bob")),
        ):
            assert (res.status_code, res.json()) == (404, gone), res.text
        assert httpx.put(f"{a.url}/v1/streams/alice-garbled", headers=as_("bob")).status_code == 409
        assert handshake(a, "/v1/streams/alice-garbled/ws", as_("bob"))[0] == 404
        assert client.hget(PREFIX + "alice-garbled", "seq") == b"seven"  # bob deleted nothing
        for who in ("alice", "admin"):
            res = httpx.get(f"{a.url}/v1/streams/alice-garbled", headers=as_(who))
            assert res.status_code == 500 and res.json()["error"]["code"] == "stream_unreadable", res.text
        assert httpx.delete(f"{a.url}/v1/streams/alice-garbled", headers=as_("alice")).status_code == 204
        assert not client.exists(PREFIX + "alice-garbled")
        assert httpx.put(f"{a.url}/v1/streams/alice-garbled", headers=as_("alice")).status_code == 201

        assert httpx.get(f"{a.url}/v1/streams/typed", headers=as_("alice")).status_code == 404
        assert httpx.delete(f"{a.url}/v1/streams/typed", headers=as_("alice")).status_code == 404
        res = httpx.get(f"{a.url}/v1/streams/typed", headers=as_("admin"))
        assert res.status_code == 500 and res.json()["error"]["code"] == "stream_unreadable"
        assert httpx.delete(f"{a.url}/v1/streams/typed", headers=as_("admin")).status_code == 204
        assert not client.exists(PREFIX + "typed")


def test_7_the_shared_board_sends_each_subscriber_its_own_streams():
    """One board, one computation a tick: alice, bob and the admin subscribed at once each get their
    own streams' rows (the admin every row), the ids of their own rows taken away, and nothing of the
    others' (not even a removed id); an id deleted and created again by another key leaves the first
    owner's board and joins the second's."""
    table = StreamTable(8, 4, 32)
    alice, bob = Tenant("alice"), Tenant("bob")
    admin = Tenant("admin", admin=True)

    def read(queue: asyncio.Queue) -> list[tuple[str, dict]]:
        out = []
        while not queue.empty():
            head, data = queue.get_nowait().decode().strip().split("\n")
            out.append((head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
        return out

    def ids(events: list[tuple[str, dict]]) -> tuple[set[str], set[str]]:
        return {r["stream_id"] for _, d in events for r in d["rows"]}, {i for _, d in events for i in d["removed"]}

    async def main() -> None:
        board = Board(table, 8, CollectorRegistry())
        table.create("a1", owner="alice")
        table.create("b1", owner="bob")
        queues = {who: board.subscribe(who) for who in (alice, bob, admin)}
        await asyncio.sleep(0.25)
        seen = {who: read(q) for who, q in queues.items()}
        assert all(events[0][0] == "snapshot" for events in seen.values())
        assert ids(seen[alice])[0] == {"a1"} and ids(seen[bob])[0] == {"b1"}
        assert ids(seen[admin])[0] == {"a1", "b1"}
        ticks = board.ticks._value.get()

        table.remove(table.streams["a1"])
        table.create("a2", owner="alice")
        table.remove(table.streams["b1"])
        table.create("b1", owner="alice")  # bob's id, deleted, created again by alice
        await asyncio.sleep(0.25)
        seen = {who: read(q) for who, q in queues.items()}
        assert ids(seen[alice]) == ({"a2", "b1"}, {"a1"})
        assert ids(seen[bob]) == (set(), {"b1"})
        assert ids(seen[admin]) == ({"a2", "b1"}, {"a1"})
        assert board.ticks._value.get() - ticks <= 4  # one a tick, not one a subscriber

        late = board.subscribe(bob)
        await asyncio.sleep(0.15)
        assert read(late)[0] == ("snapshot", {"rows": [], "removed": []})
        for queue in (*queues.values(), late):
            board.unsubscribe(queue)
        assert not board.tenants

    asyncio.run(main())


def test_7_the_page_with_a_tenants_key_shows_its_streams_and_streams_its_demo(browser, tiny_model, demo_dir, tmp_path):
    """The page as it is (server/web/*.js): the key typed in goes over fetch as Authorization and over the
    WebSocket as the bearer subprotocol; the board shows that key's streams only."""
    with ServerProcess(tiny_model, tmp_path / "log", demo_dir=demo_dir, **TENANTS) as srv:
        assert httpx.put(f"{srv.url}/v1/streams/bob-hidden", headers=as_("bob")).status_code == 201
        assert httpx.put(f"{srv.url}/v1/streams/alice-shown", headers=as_("alice")).status_code == 201
        watched = Watched(browser, srv)
        page = watched.page
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#key", KEYS["alice"])
        page.click("#key-form button")
        page.wait_for_selector("#status:has-text('live')")
        page.wait_for_function("() => window.progressBoard.rows.has('alice-shown')", timeout=10_000)
        page.fill("#fps", "240")
        page.click("#start")
        page.wait_for_function(
            "() => window.progressDemo.state.done || window.progressDemo.state.error", timeout=20_000
        )
        assert page.evaluate("() => window.progressDemo.state.error") is None
        shown = set(page.evaluate("() => [...window.progressBoard.rows.keys()]"))
        assert "alice-shown" in shown and "bob-hidden" not in shown
        assert set(listed(srv.url, "alice")) - {"alice-shown"}  # the demo's stream, alice's
        assert listed(srv.url, "bob") == ["bob-hidden"]
        assert [p for p in watched.problems if "401" not in p] == []
        watched.close()
