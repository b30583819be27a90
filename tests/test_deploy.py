"""Deployment: the Dockerfile (read statically: no Docker engine here nor in CI), the
build script (dry run), and the start script serving the app for real.

The Dockerfile's build and start steps are scripts (deploy/system-packages.sh,
deploy/build.sh, deploy/start.sh); CI runs the first two to make its own environment
(.ci/run), and every browser test starts the app through deploy/start.sh, so what the
image runs is what CI runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from interp.bench_app import app_log, free_port, start_app, stop_app, wait_healthy
from interp.store import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"


def _dockerfile() -> str:
    return (PROJECT_ROOT / "Dockerfile").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def _torch_pin() -> str:
    pins = re.findall(r"^torch==([^\s#]+)", (PROJECT_ROOT / "requirements.txt").read_text(),
                      re.M)
    assert len(pins) == 1
    return pins[0]


def test_dockerfile_uses_the_scripts_and_pins():
    ins = _instructions(_dockerfile())
    kinds = [k for k, _ in ins]
    args = dict(ins)  # last one of each kind
    # Python: the version the README installs with, in the base image
    assert "python3.11 -m venv" in (PROJECT_ROOT / "README.md").read_text()
    assert ("ARG", "PYTHON_VERSION=3.11") in ins
    assert [a for k, a in ins if k == "FROM"] == ["python:${PYTHON_VERSION}-slim-bookworm"]
    assert ("ARG", "TORCH_VARIANT=cpu") in ins  # CPU by default; cuda by build arg
    runs = " && ".join(a for k, a in ins if k == "RUN")
    assert "deploy/system-packages.sh" in runs
    assert re.search(r"TORCH_VARIANT=\$\{TORCH_VARIANT\} deploy/build\.sh /opt/venv", runs)
    # the environment layer comes before the sources are copied (code edits keep it)
    copies = [i for i, (k, a) in enumerate(ins) if k == "COPY"]
    build = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and "build.sh" in a)
    assert ins[copies[-1]][1] == ". ." and copies[-1] > build
    assert args["CMD"] == '["deploy/start.sh"]'
    assert args["EXPOSE"] == "8501"
    assert "deploy/healthcheck.py" in args["HEALTHCHECK"]
    env = " ".join(a for k, a in ins if k == "ENV")
    for setting in ("PORT=8501", "ADDRESS=0.0.0.0", "INTERP_CONFIG=deploy/demo.toml",
                    "HF_HUB_OFFLINE=1", "VENV=/opt/venv"):
        assert setting in env
    assert "USER" in kinds and args["USER"] != "root"
    assert kinds.index("USER") < kinds.index("CMD")
    # the image's files: the scripts it copies exist and are executable
    for script in ("system-packages.sh", "build.sh", "start.sh"):
        assert os.access(DEPLOY / script, os.X_OK), script
    ignore = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "cache/*", "!cache/organisms", "!cache/demo"} <= set(ignore)


def _build_dry_run(**env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / "build.sh"), "/opt/venv"], cwd=PROJECT_ROOT,
                          env={**os.environ, "DRY_RUN": "1", **env}, capture_output=True,
                          text=True, timeout=60)


def test_build_script_installs_the_pinned_torch_first():
    pin = _torch_pin()
    out = _build_dry_run(TORCH_VARIANT="cpu").stdout.splitlines()
    assert out[0] == "+ python3.11 -m venv /opt/venv"
    assert out[1] == ("+ /opt/venv/bin/python -m pip install -q --index-url "
                      f"https://download.pytorch.org/whl/cpu torch=={pin}")
    assert out[2] == "+ /opt/venv/bin/python -m pip install -q -r requirements.txt"
    assert out[3] == "+ /opt/venv/bin/python -m pip check"
    for variant in ("cuda", "default"):
        r = _build_dry_run(TORCH_VARIANT=variant, EXTRA_REQUIREMENTS="requirements-dev.txt")
        assert r.returncode == 0
        lines = r.stdout.splitlines()
        assert lines[1] == f"+ /opt/venv/bin/python -m pip install -q torch=={pin}"
        assert lines[2].endswith("-r requirements.txt -r requirements-dev.txt")
    bad = _build_dry_run(TORCH_VARIANT="rocm")
    assert bad.returncode == 2 and "TORCH_VARIANT" in bad.stderr


def test_ci_builds_with_the_same_scripts():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "\ndeploy/system-packages.sh\n" in ci
    assert "EXTRA_REQUIREMENTS=requirements-dev.txt deploy/build.sh .venv" in ci
    assert "pip install" not in ci  # no second, drifting install recipe


def test_streamlit_config_serves_without_a_file_watcher():
    import tomllib

    cfg = tomllib.loads((PROJECT_ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


def _healthcheck(port: int) -> int:
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), "--port",
                           str(port), "--timeout", "3"], capture_output=True,
                          timeout=30).returncode


def test_start_script_serves_the_app(tmp_cache):
    """deploy/start.sh on a free port (demo mode): healthy, serves the page, no
    file-watcher noise in the log; stopped, the health check fails."""
    port = free_port()
    assert _healthcheck(port) == 1  # nothing there yet
    proc = start_app(port, {"INTERP_CACHE": str(tmp_cache), "INTERP_DEMO": "1"})
    try:
        wait_healthy(port, proc, timeout_s=120)
        assert _healthcheck(port) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            html = r.read().decode()
        assert r.status == 200 and "<noscript>" in html and "<script" in html
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models?base=x", timeout=10) as r:
            assert r.status == 200  # deep links are served by the same page
        deadline = time.monotonic() + 180  # the imports run in the background
        while "imports ready in" not in app_log(proc) and time.monotonic() < deadline:
            time.sleep(0.5)
        log = app_log(proc)
        assert "imports ready in" in log and f"127.0.0.1:{port}" in log
        assert "Inotify" not in log and "Traceback" not in log
    finally:
        stop_app(proc)
    deadline = time.monotonic() + 20
    while _healthcheck(port) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _healthcheck(port) == 1


@pytest.mark.parametrize("script", ["build.sh", "start.sh", "system-packages.sh"])
def test_scripts_are_strict_bash(script):
    text = (DEPLOY / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    r = subprocess.run(["bash", "-n", str(DEPLOY / script)], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
