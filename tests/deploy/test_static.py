"""What can be checked of the deployment without a Docker engine: lint, what the images install and copy,
compose, nginx, the health check against a real server. `docker build .` needs nothing outside the repository."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from scripts.cluster_smoke import UPSTREAM_PARAMS

ROOT = Path(__file__).resolve().parents[2]
BESIDE = "/".join(("..", "shared"))  # the workplace's folder beside a checkout (spelled so that no file names it)
DEPLOYMENT = ["Dockerfile", "docker-compose.yml", "docker-compose.gpu.yml", ".dockerignore", "Makefile", ".ci/run"]
needs = {
    tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed (.ci/run installs it)")
    for tool in ("docker-compose", "nginx", "make", "git")
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stage(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S).group(1)


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
        for p in patterns
    )


def test_every_target_builds_from_this_repository_alone():
    """No named build context: COPY takes tracked files of the repository (not ignored by .dockerignore) or
    files of an earlier stage; nothing names the folder beside the repository, /annotations or ANNOTATIONS."""
    stages: list[str] = []
    for instruction in dockerfile_instructions():
        keyword, _, rest = instruction.partition(" ")
        if keyword == "FROM":
            stages.append(rest.split(" AS ")[-1] if " AS " in rest else rest)
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", instruction
        args = shlex.split(rest)
        flags = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--"))
        sources = [a for a in args if not a.startswith("--")][:-1]
        if "from" in flags:
            assert flags["from"] in stages[:-1], f"{instruction}: --from names no earlier stage"
            continue
        for source in sources:
            assert (ROOT / source).exists(), f"{instruction}: {source} is not in the repository"
            assert not dockerignored(source), f"{instruction}: .dockerignore drops {source}"
    assert stages[-3:] == ["model-builder", "service", "bundled"] and "train" in stages
    for name in DEPLOYMENT:
        text = (ROOT / name).read_text()
        for outside in ("--build-context", "additional_contexts", BESIDE, "ANNOTATIONS_DIR"):
            assert outside not in text, f"{name} names {outside}"
        assert not re.search(r"(^|[\s:=\"'])/annotations\b", text, re.M), f"{name} mounts /annotations"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ANNOTATIONS" not in dockerfile


@needs["git"]
def test_no_tracked_file_refers_to_a_folder_beside_the_repository():
    """Data, docs and examples come from the repository."""
    result = subprocess.run(
        ["git", "grep", "-n", "-F", "-e", BESIDE],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, f"tracked files name {BESIDE}:\n{result.stdout}{result.stderr}"


def test_service_image_runs_the_command_the_tests_run_with_serve_gpu_and_no_torch():
    service = dockerfile_stage("service")
    entrypoint = re.search(r'^ENTRYPOINT \["progress", "serve"\]$', service, re.M)
    assert entrypoint, "the service image must start `progress serve`"
    # tests start `python -m progress_stream.cli serve`: the same app as the `progress` script
    assert PYPROJECT["scripts"]["progress"] == "progress_stream.cli.main:app"
    installs = [line for line in re.sub(r"\\\n", " ", service).splitlines() if "pip install" in line]
    assert len(installs) == 1 and '"/src[serve-gpu]"' in installs[0], installs
    for wrong in ("torch", "[train]", "[serve]", "[dev]", "[gpu]"):
        assert wrong not in installs[0]
    assert re.search(r"^USER 10001$", service, re.M)
    assert re.search(r"^COPY src \./src$", service, re.M)


def test_train_image_installs_torch_cpu_then_what_make_model_and_make_verify_run():
    train = re.sub(r"\\\n", " ", dockerfile_stage("train"))
    torch_pin = next(r for r in PYPROJECT["optional-dependencies"]["train"] if requirement_name(r) == "torch")
    cpu = re.search(r"pip install --no-cache-dir (\S+) --index-url https://download\.pytorch\.org/whl/cpu", train)
    assert cpu and cpu.group(1) == torch_pin
    extras = re.search(r"make install PYTHON=python EXTRAS=(\S+)", train)
    assert extras and set(extras.group(1).split(",")) == {"train", "serve"}  # export needs torch, verify onnxruntime
    assert cpu.start() < extras.start()
    assert re.search(r"^COPY src \./src$", train, re.M) and re.search(r"^COPY configs \./configs$", train, re.M)
    builder = dockerfile_stage("model-builder")
    assert re.search(r"^RUN make model models/demo/index\.json$", builder, re.M)


@needs["make"]
@pytest.mark.parametrize(("args", "installed"), [([], "-e '.[dev]'"), (["EXTRAS=train,serve"], "-e '.[train,serve]'")])
def test_make_install_installs_the_extras_asked(args, installed):
    """`make install`: the dev install; the train image's `make install EXTRAS=train,serve`: those two."""
    result = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "install", "PYTHON=python", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if "pip install -q -e" in line] == [
        f".venv/bin/pip install -q {installed}"
    ]


def test_the_health_check_command_passes_against_a_real_server(server):
    """The HEALTHCHECK's own command, pointed at a real `progress serve` (the image's port replaced)."""
    service = dockerfile_stage("service")
    check = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", re.sub(r"\\\n", " ", service), re.M)
    assert check, "the service image has no exec-form HEALTHCHECK"
    argv = json.loads(check.group(1))
    assert argv[0] == "python3" and "http://127.0.0.1:8000/healthz" in argv[-1]
    argv = [sys.executable, *argv[1:-1], argv[-1].replace("http://127.0.0.1:8000", server.url)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


def test_base_dependencies_are_the_light_client():
    """The bare install is the client: no torch, no ONNX Runtime, no server; each ONNX Runtime build only
    through its own serving extra (they ship the same `onnxruntime` module and overwrite each other)."""
    base = {requirement_name(d) for d in PYPROJECT["dependencies"]}
    heavy = {"torch", "onnxruntime", "onnxruntime-gpu", "fastapi", "uvicorn", "redis", "picows", "prometheus-client"}
    assert not base & heavy
    extras = {name: {requirement_name(r) for r in reqs} for name, reqs in PYPROJECT["optional-dependencies"].items()}
    assert not extras["server"] & {"onnxruntime", "onnxruntime-gpu", "torch"}
    assert extras["serve"] == {"progress-stream", "onnxruntime"}
    assert extras["serve-gpu"] == {"progress-stream", "onnxruntime-gpu"}
    assert PYPROJECT["optional-dependencies"]["serve-gpu"][0] == "progress-stream[server]"


@needs["docker-compose"]
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_validate(files):
    args = [a for f in files for a in ("-f", f)]
    result = subprocess.run(
        ["docker-compose", *args, "--profile", "loadtest", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"trainer", "redis", "progress-a", "progress-b", "proxy", "prometheus", "loadtest"} <= set(services)
    assert {services[r]["environment"]["PROGRESS_STATE_URL"] for r in ("progress-a", "progress-b")} == {
        "redis://redis:6379/0"
    }
    gpu = [s for s in services.values() if "deploy" in s]
    assert len(gpu) == (2 if len(files) == 2 else 0)
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == {"progress-a", "progress-b"}
    upstreams = services["proxy"]["environment"]["PROGRESS_UPSTREAMS"]
    assert re.findall(rf"server ([\w-]+):8000 {UPSTREAM_PARAMS};", upstreams) == ["progress-a", "progress-b"]
    # nothing mounted or built from outside the repository: named volumes, or files of the repository
    for name, service in services.items():
        if "build" in service:
            assert Path(service["build"]["context"]).resolve() == ROOT, name
            assert set(service["build"]) <= {"context", "target", "dockerfile"}, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            assert source in config["volumes"] or Path(source).resolve().is_relative_to(ROOT), (name, volume)
    assert services["trainer"]["volumes"] in (["models:/models:rw"], ["models:/models"])


def compose_config(env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@needs["docker-compose"]
def test_compose_replicas_answer_only_the_names_they_are_reached_by():
    """The replicas bind 0.0.0.0 in their containers, where any Host would pass: compose names the hosts
    (the published port on this machine, the proxy, Prometheus' targets), so a page rebound by DNS to
    127.0.0.1 gets 421."""
    services = compose_config()["services"]
    for replica in ("progress-a", "progress-b"):
        hosts = services[replica]["environment"]["PROGRESS_ALLOWED_HOSTS"].split(",")
        assert {"localhost", "127.0.0.1", "[::1]", "proxy", "progress-a", "progress-b"} <= set(hosts)
        assert "*" not in hosts
    told = compose_config({"PROGRESS_ALLOWED_HOSTS": "progress.example"})["services"]
    assert told["progress-a"]["environment"]["PROGRESS_ALLOWED_HOSTS"] == "progress.example"


@needs["docker-compose"]
def test_compose_publishes_its_ports_on_loopback_unless_told():
    """No service has an API key by default: what compose publishes is reachable from this machine only,
    unless PROGRESS_PUBLISH names another address."""
    for env, address in (({}, "127.0.0.1"), ({"PROGRESS_PUBLISH": "0.0.0.0"}, "0.0.0.0")):
        services = compose_config(env)["services"]
        published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
        assert {"proxy", "prometheus"} <= set(published)
        for name, ports in published.items():
            hosts = [p["host_ip"] if isinstance(p, dict) else p.rsplit(":", 2)[0] for p in ports]
            assert hosts == [address] * len(ports), (name, ports)


@needs["nginx"]
def test_nginx_template_renders_to_a_valid_config(tmp_path):
    site = string.Template((ROOT / "deploy" / "nginx" / "progress.conf.template").read_text()).safe_substitute(
        PROGRESS_LISTEN="127.0.0.1:18000", PROGRESS_UPSTREAMS="server 127.0.0.1:18001; server 127.0.0.1:18002;"
    )
    assert "${" not in site and "hash $progress_stream consistent" in site
    (tmp_path / "logs").mkdir()
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        "pid nginx.pid;\nerror_log logs/error.log;\nevents {}\nhttp { include site.conf; }\n"
    )
    result = subprocess.run(
        [shutil.which("nginx"), "-p", str(tmp_path), "-c", "nginx.conf", "-t"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
