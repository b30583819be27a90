"""``python -m interp``: help, the report/bench contract for unknown names, models commands.

Run as real subprocesses (the way users and CI call it), with ``INTERP_CACHE`` pointing
at a temp folder so nothing touches the project's cache/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from interp.store import PROJECT_ROOT


def run_cli(*args: str, cache=None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    if cache is not None:
        env["INTERP_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "interp", *args], capture_output=True,
                          text=True, env=env, cwd=PROJECT_ROOT, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_help():
    p = run_cli("--help")
    assert p.returncode == 0, p.stderr
    for word in ("report", "bench", "models"):
        assert word in p.stdout


@pytest.mark.parametrize("command,what", [("report", "report"), ("bench", "bench")])
def test_unknown_name_fails_with_message(command, what):
    p = run_cli(command, "no-such-thing", "--json")
    assert p.returncode != 0
    assert f"unknown {what} 'no-such-thing'" in p.stderr
    assert "choose from:" in p.stderr
    assert p.stdout.strip() == ""  # no JSON pretending to be a result


def test_models_subcommand_required():
    p = run_cli("models")
    assert p.returncode != 0 and "models" in p.stderr


def test_models_register_list_check(tmp_path, tiny_qwen_dir):
    cache = tmp_path / "cache"
    p = run_cli("models", "register", "tiny", str(tiny_qwen_dir), cache=cache)
    assert p.returncode == 0, p.stderr
    assert last_json(p.stdout)["name"] == "tiny"
    reg = json.loads((cache / "models.json").read_text())
    assert reg["tiny"]["path"] == str(tiny_qwen_dir.resolve())

    p = run_cli("models", "list", "--json", cache=cache)
    rows = last_json(p.stdout)["models"]
    assert [(r["spec"], r["source"]) for r in rows] == [("tiny", "registry")]

    p = run_cli("models", "check", "tiny", "--device", "cpu", cache=cache)
    assert p.returncode == 0, p.stderr
    res = last_json(p.stdout)
    assert res["ok"] is True and res["max_abs_logit_diff"] < 1e-4
    assert res["architecture"] == "Qwen2ForCausalLM" and res["n_tokens"] > 3


def test_models_errors_are_messages(tmp_path):
    cache = tmp_path / "cache"
    p = run_cli("models", "register", "x", str(tmp_path / "missing"), cache=cache)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    p = run_cli("models", "check", "no-such-model", cache=cache)
    assert p.returncode == 1
    assert "unknown model 'no-such-model'" in p.stderr and "Traceback" not in p.stderr
