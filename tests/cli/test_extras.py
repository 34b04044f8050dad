"""A subcommand whose extra is not installed says which one, in one line, exit code 2 (the bare install is
the light client). Each case runs the real ``progress`` app in a fresh interpreter whose imports of the
named modules fail, as they do where the extra was never installed."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

from progress_stream.cli.main import EXTRA_MODULES, needs

ROOT = Path(__file__).resolve().parents[2]

#: Run in ``python -c``: a meta-path finder that refuses the listed modules (and their submodules) the way
#: the import system refuses a module that is not installed, then the ``progress`` app on the argv.
BLOCKED_RUN = textwrap.dedent(
    """
    import json, sys

    blocked = set(json.loads(sys.argv[1]))

    class NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    from progress_stream.cli.main import app

    app(sys.argv[2:], prog_name="progress")
    """
)


def progress(blocked: list[str], *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, json.dumps(blocked), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def extra_line(command: str, extra: str) -> str:
    line = f"error: 'progress {command}' needs the [{extra}] extra: pip install 'progress-stream[{extra}]'"
    return line + (" (with CUDA: 'progress-stream[serve-gpu]' instead)" if extra == "serve" else "")


CASES = [
    # (missing modules, argv, the extra named)
    (["torch"], ["train", "--annotations", "a.json", "--features", "f", "--out", "o"], "train"),
    (["optuna"], ["train", "--annotations", "a.json", "--features", "f", "--out", "o", "--search", "2"], "train"),
    (["tqdm"], ["synth", "--out", "o"], "train"),
    (["tqdm"], ["sweep", "--data", "d"], "train"),
    (["matplotlib"], ["eval", "--checkpoint", "c.pt", "--annotations", "a", "--features", "f", "--out", "o"], "train"),
    (["torch"], ["summary", "reports/x"], "train"),
    (["onnx"], ["export", "--checkpoint", "c.pt", "--out", "m.onnx"], "train"),
    (["torch"], ["verify-export", "m.onnx", "--checkpoint", "c.pt"], "train"),
    (["onnxruntime"], ["verify-export", "m.onnx", "--checkpoint", "c.pt"], "serve"),
    (["onnxruntime"], ["serve", "--model", "m.onnx"], "serve"),
    (["fastapi", "uvicorn"], ["serve", "--model", "m.onnx"], "serve"),
    (["picows"], ["serve", "--model", "m.onnx"], "serve"),
    (["uvloop"], ["loadtest"], "loadtest"),
    (["picows"], ["loadtest"], "loadtest"),
]


@pytest.mark.parametrize(("missing", "argv", "extra"), CASES, ids=[f"{c[1][0]}-{'+'.join(c[0])}" for c in CASES])
def test_a_missing_extra_is_named_in_one_line(missing, argv, extra, tmp_path):
    # cwd: an empty folder, so nothing the command might do before its imports touches the repository
    result = progress(missing, *argv, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == extra_line(argv[0], extra)
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "missing",
    [
        "progress_stream.training.synth",  # our own code: a bug, never an extra
        "numpy",  # a base dependency: a broken install, not a missing extra
    ],
)
def test_a_module_of_no_extra_still_raises(missing, tmp_path):
    result = progress([missing], "synth", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert re.search(rf"^ModuleNotFoundError: No module named '{re.escape(missing)}'$", result.stderr, re.M)
    assert "Traceback" in result.stderr and "needs the" not in result.stderr


def test_a_submodule_missing_from_an_installed_extra_still_raises(tmp_path):
    """matplotlib is there but a part of it is not: a broken install, not a missing extra."""
    result = progress(["matplotlib.pyplot"], "summary", str(tmp_path))
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'matplotlib.pyplot'" in result.stderr
    assert "Traceback" in result.stderr and "needs the" not in result.stderr


def test_probe_and_demo_pack_need_no_extra(tiny_data, tmp_path):
    """Both read features with numpy only: they run with every extra's modules missing."""
    every = sorted(set().union(*EXTRA_MODULES.values()))
    probe = progress(every, "probe", "--data", str(tiny_data), "--window", "1")
    assert probe.returncode == 0, probe.stderr
    assert re.fullmatch(rf"{re.escape(str(tiny_data))}\tphase R2 -?\d+\.\d{{3}}\n", probe.stdout)
    pack = progress(
        every,
        "demo-pack",
        "--annotations",
        str(tiny_data / "annotations.json"),
        "--features",
        str(tiny_data / "features"),
        "--out",
        str(tmp_path / "demo"),
        "--count",
        "2",
    )
    assert pack.returncode == 0, pack.stderr
    assert (tmp_path / "demo" / "index.json").is_file()


def test_unknown_extras_are_refused():
    with pytest.raises(ValueError, match="unknown extras"):
        needs("trian")


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_module_table_follows_pyproject():
    """Every package an extra lists (that this environment has installed) provides a module of the table,
    and every module of the table is installed here (the dev install has train, serve and loadtest)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    closure = {
        "train": extras["train"],
        "serve": extras["server"] + [r for r in extras["serve"] if not r.startswith("progress-stream")],
        "loadtest": extras["loadtest"],
    }
    assert set(closure) == set(EXTRA_MODULES)
    modules_of: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    for extra, reqs in closure.items():
        for req in reqs:
            name = requirement_name(req)
            try:
                requires(name)
            except PackageNotFoundError:
                continue
            assert modules_of.get(name, set()) & EXTRA_MODULES[extra], f"[{extra}] lists {name}: which module?"
        missing = [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
        assert not missing, f"[{extra}] modules not installed: {missing}"
