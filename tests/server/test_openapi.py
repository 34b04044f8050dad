"""The generated OpenAPI schema declares the real limits, agrees with what is accepted, and survives
schemathesis (a pinned version, a fixed seed, a bounded number of examples) with zero failures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

from progress_stream.contract.errors import ERRORS, error_table
from progress_stream.contract.wire import MAX_ABS_VALUE, STREAM_ID
from tests.conftest import DIM

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema(server) -> dict:
    return httpx.get(f"{server.url}/openapi.json").json()


def body_schema(schema: dict, name: str) -> dict:
    """A component schema with its references resolvable by jsonschema."""
    return {**schema["components"]["schemas"][name], "components": schema["components"]}


def test_the_schema_declares_the_real_limits(schema):
    frames = schema["components"]["schemas"]["FramesRequest"]["properties"]["embeddings"]
    assert (frames["minItems"], frames["maxItems"]) == (1, 16)  # the fixture server's max_frames_per_message
    assert (frames["items"]["minItems"], frames["items"]["maxItems"]) == (DIM, DIM)  # from the loaded model
    assert frames["items"]["items"]["maximum"] == MAX_ABS_VALUE
    post = schema["paths"]["/v1/streams/{stream_id}/frames"]["post"]
    (param,) = post["parameters"]
    assert param["schema"]["pattern"] == STREAM_ID.pattern
    assert {"200", "401", "403", "404", "409", "413", "415", "422", "503"} <= set(post["responses"])
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"seq": 0, "embeddings": [[MAX_ABS_VALUE] * DIM] * 16}, True),
        ({"seq": 0, "embeddings": [[0.5] * DIM], "reset": True}, True),
        ({"seq": 0, "embeddings": [[0.5] * DIM] * 17}, False),
        ({"seq": 0, "embeddings": [[0.5] * (DIM + 1)]}, False),
        ({"seq": 0, "embeddings": [[MAX_ABS_VALUE * 1.01] * DIM]}, False),
        ({"seq": 0, "embeddings": [["0.5"] * DIM]}, False),
        ({"seq": 0, "embeddings": [[True] * DIM]}, False),
        ({"seq": "0", "embeddings": [[0.5] * DIM]}, False),
        ({"seq": 0, "embeddings": [[0.5] * DIM], "other": 1}, False),
    ],
)
def test_what_is_accepted_is_what_the_schema_says(server, schema, body, valid):
    validator = jsonschema_rs.Draft202012Validator(body_schema(schema, "FramesRequest"))
    assert validator.is_valid(body) == valid
    sid = httpx.post(f"{server.url}/v1/streams", json={}).json()["stream_id"]
    res = httpx.post(f"{server.url}/v1/streams/{sid}/frames", json=body)
    assert (res.status_code == 200) == valid, res.text
    if valid:  # even at the value bound, progress is a number in [0, 1] (not NaN, sent as null)
        assert all(isinstance(p, float) and 0 <= p <= 1 for p in res.json()["progress"])


#: Schemathesis's answers that reject invalid data, with 413: an invalid body past the route's size limit is
#: refused for its size before its shape is read (which body it generates depends on the whole schema).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]


def test_schemathesis_finds_no_failures_and_the_frames_route_is_exercised(server, tmp_path):
    har, config = tmp_path / "run.har", tmp_path / "schemathesis.toml"
    config.write_text(f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(REJECTIONS)}\n")
    st = Path(sys.executable).with_name("st")
    command = [str(st), "--config-file", str(config), "run", f"{server.url}/openapi.json", "--checks", "all"]
    command += ["--seed", "7", "--max-examples", "25"]
    result = subprocess.run(
        [*command, "--no-shrink", "--report", "har", "--report-har-path", str(har)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    statuses = Counter(
        e["response"]["status"]
        for e in json.loads(har.read_text())["log"]["entries"]
        if e["request"]["method"] == "POST" and e["request"]["url"].endswith("/frames")
    )
    assert statuses[200] > 0 and not any(s >= 500 for s in statuses), statuses


def test_the_docs_error_table_is_the_contract():
    """docs/api.md holds the placeholder, and the docs hook renders it to exactly the contract's table."""
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    placeholder = "<!-- generated: errors -->"
    page = (REPO / "docs" / "api.md").read_text()
    assert placeholder in page.splitlines()
    assert hooks.on_page_markdown(placeholder, page=None, config=None, files=None) == error_table()
    rendered = hooks.on_page_markdown(page, page=None, config=None, files=None)
    assert placeholder not in rendered and error_table() in rendered
    assert set(ERRORS) == {line.split("`")[1] for line in error_table().splitlines()[2:]}
