"""The package as users install it: the wheel holds one package and its data, and the bare install is the
light client (no torch, no ONNX Runtime, no server), which answers a real server exactly as the full dev
install's client does. Slow (a wheel build, a fresh venv and a pip install): ``pytest -m slow`` selects these,
``-m 'not slow'`` leaves them out; ``make test`` runs them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from progress_stream.client import StreamSession, SyncWsStreamSession, WsStreamSession
from tests.conftest import frames, offline

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: What the bare install must not have: the training stack, either ONNX Runtime build, the server.
HEAVY = ["torch", "onnxruntime", "fastapi", "uvicorn", "redis", "picows"]
#: Our own rooms the client must not pull in.
ROOMS = ["progress_stream.engine", "progress_stream.server", "progress_stream.training", "progress_stream.export"]


def run(argv: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the repository's sources (a copy: no build/ or egg-info left in the checkout, and
    none of a previous build's leftovers inside the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "--", "src"], cwd=ROOT).stdout.splitlines()
    for rel in ["pyproject.toml", "README.md", *listed]:
        if (ROOT / rel).is_file():
            (tmp / "src-copy" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tmp / "src-copy" / rel)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*pip, "-w", str(tmp / "dist"), str(tmp / "src-copy")])
    (built,) = (tmp / "dist").glob("progress_stream-*.whl")
    return built


@pytest.fixture(scope="module")
def light_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed with no extras: what `pip install progress-stream` gives."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=600)
    return venv / "bin" / "python"


def light(python: Path, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in the light venv, away from the checkout (so nothing imports from src/)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=python.parents[2],
        env=env,
    )


def test_the_wheel_holds_one_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    tops = {n.split("/")[0] for n in names}
    assert tops == {"progress_stream", f"progress_stream-{version}.dist-info"}, tops
    assert "progress_stream/training/timings/egoprocel.json.gz" in names
    assert "progress_stream/server/web/index.html" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = zipfile.ZipFile(wheel).read(f"progress_stream-{version}.dist-info/entry_points.txt").decode()
    assert "progress = progress_stream.cli.main:app" in entry_points


def test_the_bare_install_is_the_light_client(light_python):
    probe = light(
        light_python,
        """
        import importlib, json, sys

        heavy, rooms = json.loads(sys.argv[1]), json.loads(sys.argv[2])
        refused = {}
        for name in heavy:
            try:
                importlib.import_module(name)
                refused[name] = None
            except ModuleNotFoundError as exc:
                refused[name] = exc.name
        for name in heavy:
            sys.modules.pop(name, None)
        import progress_stream, progress_stream.client
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(tuple(rooms)))
        print(json.dumps({"refused": refused, "loaded": loaded, "file": progress_stream.__file__}))
        """,
        json.dumps(HEAVY),
        json.dumps(ROOMS),
    )
    assert probe.returncode == 0, probe.stderr
    out = json.loads(probe.stdout)
    assert out["refused"] == {name: name for name in HEAVY}  # each one is simply not installed
    assert out["loaded"] == []
    assert "site-packages" in out["file"]  # the installed wheel, not the checkout


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["serve", "--model", "m.onnx"], "serve"),
        (["train", "--annotations", "a.json", "--features", "f", "--out", "o"], "train"),
        (["synth", "--out", "o"], "train"),
        (["export", "--checkpoint", "c.pt"], "train"),
        (["loadtest"], "loadtest"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v,
)
def test_the_bare_install_names_the_extra_a_command_needs(light_python, argv, extra):
    result = subprocess.run(
        [str(light_python.parent / "progress"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=light_python.parents[2],
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = f"error: 'progress {argv[0]}' needs the [{extra}] extra: pip install 'progress-stream[{extra}]'"
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


#: Streams one action through each session kind of the installed client; prints the answers as JSON.
STREAM_ONE_ACTION = """
import asyncio, json, sys

import numpy as np

from progress_stream.client import StreamSession, SyncWsStreamSession, WsStreamSession

url, ws_url, x, chunk = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), int(sys.argv[4])
parts = [x[i : i + chunk] for i in range(0, len(x), chunk)]

with StreamSession(url) as s:
    http = np.concatenate([s.send(p) for p in parts])
with SyncWsStreamSession(ws_url, binary=True) as s:
    ws_binary = np.concatenate([s.send(p) for p in parts])


async def ws_json_answers():
    s = await WsStreamSession.open(ws_url, binary=False)
    try:
        return np.concatenate([await s.send(p) for p in parts])
    finally:
        await s.aclose()


ws_json = asyncio.run(ws_json_answers())
print(json.dumps({"http": http.tolist(), "ws-binary": ws_binary.tolist(), "ws-json": ws_json.tolist()}))
"""


def dev_answers(server, x: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """The same, with the dev install's client (in this process), on new streams."""
    parts = [x[i : i + chunk] for i in range(0, len(x), chunk)]
    with StreamSession(server.url) as s:
        http = np.concatenate([s.send(p) for p in parts])
    with SyncWsStreamSession(server.ws_url, binary=True) as s:
        ws_binary = np.concatenate([s.send(p) for p in parts])

    async def ws_json_answers() -> np.ndarray:
        s = await WsStreamSession.open(server.ws_url, binary=False)
        try:
            return np.concatenate([await s.send(p) for p in parts])
        finally:
            await s.aclose()

    return {"http": http, "ws-binary": ws_binary, "ws-json": asyncio.run(ws_json_answers())}


def test_the_light_client_gets_the_answers_the_dev_client_gets(light_python, server, runtime, tmp_path):
    x = frames(np.random.default_rng(7), 40)
    np.save(tmp_path / "action.npy", x)
    chunk = 16  # the shared server's max_frames_per_message: three messages, the last one short
    result = light(light_python, STREAM_ONE_ACTION, server.url, server.ws_url, str(tmp_path / "action.npy"), "16")
    assert result.returncode == 0, result.stderr
    answers = {k: np.asarray(v, np.float32) for k, v in json.loads(result.stdout).items()}
    mine = dev_answers(server, x, chunk)
    reference = offline(runtime, x)
    assert answers.keys() == mine.keys() == {"http", "ws-binary", "ws-json"}
    for transport, got in answers.items():
        assert got.shape == (40,)
        np.testing.assert_array_equal(got, mine[transport], err_msg=transport)
        np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0, err_msg=transport)
