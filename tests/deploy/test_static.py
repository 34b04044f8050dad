"""What can be checked of the deployment without a Docker engine: lint, compose, nginx, the entrypoint."""

from __future__ import annotations

import re
import shutil
import string
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from progress_stream.server.app import create_app
from scripts.cluster_smoke import UPSTREAM_PARAMS

ROOT = Path(__file__).resolve().parents[2]
needs = {
    tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed (.ci/run installs it)")
    for tool in ("docker-compose", "nginx")
}


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stage(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S).group(1)


def test_service_image_runs_the_command_the_tests_run_and_no_torch():
    service = dockerfile_stage("service")
    entrypoint = re.search(r'^ENTRYPOINT \["progress", "serve"\]$', service, re.M)
    assert entrypoint, "the service image must start `progress serve`"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert (
        scripts["progress"] == "progress_stream.cli.main:app"
    )  # tests start `python -m progress_stream.cli.main serve`: the same command
    installs = [line for line in service.splitlines() if "pip install" in line]
    assert installs and not [line for line in installs if "torch" in line or "[train]" in line]
    healthcheck = re.search(r"HEALTHCHECK .*?(http://127\.0\.0\.1:8000(/\w+))", service, re.S)
    assert healthcheck and healthcheck.group(2) in create_app().openapi()["paths"]
    assert re.search(r"^USER 10001$", service, re.M)


def test_service_dependencies_exclude_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.startswith("torch")]
    assert any(d.startswith("onnxruntime-gpu") for d in deps)


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
