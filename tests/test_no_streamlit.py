"""interp/ never imports streamlit: not at import time, and not anywhere in its source."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys

import interp
from interp.store import PROJECT_ROOT


def interp_modules() -> list[str]:
    """Every module of the interp package (walked from the source tree)."""
    names = ["interp"]
    for info in pkgutil.walk_packages(interp.__path__, "interp."):
        if info.name != "interp.__main__":  # running it would start the CLI
            names.append(info.name)
    return sorted(names)


def streamlit_imports(source: str) -> list[int]:
    """Line numbers of ``import streamlit`` / ``from streamlit... import`` /
    ``importlib.import_module("streamlit...")`` / ``__import__("streamlit")``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "streamlit" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == \
                "streamlit":
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and node.args[0].value.split(".")[0] == "streamlit" \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                    "import_module", "__import__"):
            lines.append(node.lineno)
    return lines


def test_detector_finds_streamlit_imports():
    src = ("import os, streamlit as st\nfrom streamlit.testing.v1 import AppTest\n"
           "import importlib\nm = importlib.import_module('streamlit')\n"
           "s = __import__('streamlit')\n'''import streamlit'''\n")
    assert streamlit_imports(src) == [1, 2, 4, 5]


def test_no_streamlit_in_interp_sources():
    offenders = {}
    for path in sorted((PROJECT_ROOT / "interp").rglob("*.py")):
        lines = streamlit_imports(path.read_text())
        if lines:
            offenders[str(path.relative_to(PROJECT_ROOT))] = lines
    assert offenders == {}


def test_importing_every_module_leaves_streamlit_out():
    mods = interp_modules()
    assert "interp.models" in mods and "interp.store" in mods
    code = (
        "import importlib, json, sys\n"
        f"mods = {mods!r}\n"
        "failed = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        failed[m] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'streamlit': sorted(k for k in sys.modules\n"
        "                   if k.split('.')[0] == 'streamlit'), 'failed': failed}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, out["failed"]
    assert out["streamlit"] == [], f"streamlit got imported: {out['streamlit'][:5]}"
