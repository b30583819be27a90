"""The hosted demo (AppTest, in this process): organisms only, no training, capped and
rate-limited work, one line per page on what it allows, and nothing written to disk.

The committed organisms are linked into the test's private cache (read-only use); the
committed demo artifacts are read from the project's cache/demo, which demo mode opens
read-only. The last test checks that no file under either cache changed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from interp import serving
from interp.store import PROJECT_ROOT

from .test_app import _app, _texts

PAGES = ("pages/home.py", "pages/models.py", "pages/adapters.py", "pages/length.py",
         "pages/vectors.py")
ORGANISMS = PROJECT_ROOT / "cache" / "organisms"

pytestmark = [
    pytest.mark.usefixtures("_navigation_mode"),
    pytest.mark.skipif(not (ORGANISMS / "reasoner" / "config.json").exists(),
                       reason="the committed organisms are missing"),
]


@pytest.fixture
def demo(tmp_cache, monkeypatch, tmp_path):
    """Demo mode with the organisms; returns a function writing the [demo] table."""
    (tmp_cache / "organisms").symlink_to(ORGANISMS, target_is_directory=True)
    cfg = tmp_path / "demo.toml"
    cfg.write_text("[demo]\nenabled = true\n")
    monkeypatch.setenv("INTERP_CONFIG", str(cfg))
    monkeypatch.delenv("INTERP_DEMO", raising=False)

    def settings(**kw):
        cfg.write_text("[demo]\nenabled = true\n" + "".join(f"{k} = {v}\n"
                                                            for k, v in kw.items()))
    return settings


def _main_captions(at) -> str:
    return "\n".join(str(c.value) for c in at.main.children.values()
                     if type(c).__name__ == "Caption")


@pytest.mark.parametrize("page", PAGES)
def test_each_page_says_what_the_demo_allows(demo, page):
    at = _app(page=page)
    assert not at.exception, [e.value for e in at.exception]
    line = [t for t in _main_captions(at).splitlines() if "Hosted demo" in t]
    assert len(line) == 1, _main_captions(at)
    if page in ("pages/models.py", "pages/vectors.py"):
        assert "64 new tokens" in line[0]  # the configured limits, not a fixed text
    assert at.get("download_button") and any(
        b.key == "report_zip" for b in at.sidebar.get("download_button"))


def test_demo_refuses_other_models(demo):
    at = _app({"base": "/etc", "fine": "Qwen/Qwen2.5-0.5B"}, "pages/models.py")
    assert not at.exception
    assert at.selectbox(key="base_choice").value == "organism:base"
    assert at.selectbox(key="fine_choice").value == "organism:reasoner"
    assert "Other…" not in at.selectbox(key="base_choice").options
    side = _texts(at.sidebar.caption)
    assert "`/etc` is not available in the hosted demo" in side
    assert "`Qwen/Qwen2.5-0.5B` is not available" in side
    assert "Where the weights moved" in _texts(at.subheader)  # the organisms loaded
    # the vectors page offers organisms only, also against a crafted link
    at = _app({"vt": "Qwen/Qwen2.5-0.5B"}, "pages/vectors.py")
    assert not at.exception
    assert at.selectbox(key="vt").value == "organism:instruct"
    assert all(o.startswith("organism:") for o in at.selectbox(key="va").options)


def _load_script():
    import streamlit as st

    import pages.common as ui

    model = ui.attempt(ui.cached_model, "Qwen/Qwen2.5-0.5B", "cpu", "auto")
    st.write(f"loaded: {model is not None}")


def test_cached_model_refuses_hub_names_in_demo(demo):
    at = AppTest.from_function(_load_script, default_timeout=60).run()
    assert not at.exception
    assert "only the model organisms" in _texts(at.error)
    assert "loaded: False" in _texts(at.markdown)


def test_demo_refuses_training(demo):
    at = _app(page="pages/adapters.py")
    assert not at.exception
    assert not [e for e in at.expander if "Train" in str(e.label)]
    assert not [b for b in at.button if "start" in (b.key or "")]
    at = _app(page="pages/length.py")
    assert not at.exception
    assert not [e for e in at.expander if "New run" in str(e.label)]
    at = _app(page="pages/vectors.py")
    assert not at.exception
    assert not [b for b in at.button if "start" in (b.key or "")]


def test_demo_caps_prompt_and_new_tokens(demo):
    at = _app({"gen": "1", "prompt": "Q add 1 2 3 4 + 5 6 7 8 = <think> " * 40},
              "pages/models.py")
    assert not at.exception
    assert "at most 600" in _texts(at.error)
    assert at.number_input(key="max_new").max == 64
    demo(max_new_tokens=8, max_prompt_chars=40)
    at = _app({"gen": "1", "max_new": "8"}, "pages/models.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="max_new").max == 8
    assert "8 new tokens" in _main_captions(at)
    codes = [c.value for c in at.get("code") if "from interp" not in c.value]
    assert len(codes) == 3, codes  # prompt as seen + the two generations (not the snippets)
    assert at.text_area(key="prompt").max_chars == 40


def test_busy_server_and_spent_session_say_so(demo):
    demo(max_concurrent=1, queue_seconds=0.2, session_burst=1, session_per_minute=0.5)
    held, release = threading.Event(), threading.Event()

    def hold():
        with serving.limiter(serving.settings()).slot():
            held.set()
            release.wait(timeout=60)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(timeout=10)
    try:
        at = _app({"gen": "1", "max_new": "4"}, "pages/models.py")
        assert not at.exception
        assert "busy" in _texts(at.error) and "Try again" in _texts(at.error)
    finally:
        release.set()
        t.join()
    # the busy attempt spent the session's one token; the next generation is refused
    at.number_input(key="max_new").set_value(5)
    at.button(key="generate").click().run()
    assert "used its share" in _texts(at.error)


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                s = p.stat()
                out[str(p)] = (s.st_size, s.st_mtime_ns)
    return out


def test_demo_writes_nothing(demo, tmp_cache):
    roots = (PROJECT_ROOT / "cache", tmp_cache)
    before = _snapshot(*roots)
    for page in PAGES:
        at = _app({"gen": "1", "max_new": "6", "vgen": "1"}, page)
        assert not at.exception, (page, [e.value for e in at.exception])
    assert _snapshot(*roots) == before


@pytest.mark.parametrize("page, command", [
    ("pages/adapters.py", "python -m interp adapters train --base organism:base "
                          "--reasoner organism:reasoner"),
    ("pages/length.py", "python -m interp length build --model organism:reasoner")])
def test_demo_says_where_it_hides_training(demo, page, command):
    at = _app(page=page)
    assert not at.exception, [e.value for e in at.exception]
    lines = [t for t in _main_captions(at).splitlines() if "off in this hosted demo" in t]
    assert len(lines) == 1, _main_captions(at)
    assert f"run it locally: `{command}`" in lines[0]


def test_demo_loads_only_organisms_and_listed_models(demo, tiny_pair_dirs):
    """A model the demo config lists is offered and loads; a hub name in a link (there
    is no *Other…* field to type one) is refused with a line naming what loads."""
    from interp.errors import DemoRestrictedError
    from interp.models import register_model

    register_model("tiny-listed", tiny_pair_dirs[1])
    demo(models='["tiny-listed"]')
    at = _app({"fine": "Qwen/Qwen2.5-0.5B"}, "pages/models.py")
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="fine_choice")
    assert "tiny-listed" in box.options and "Other…" not in box.options
    assert box.value == "organism:reasoner"
    side = _texts(at.sidebar.caption)
    assert "`Qwen/Qwen2.5-0.5B` is not available in the hosted demo" in side
    assert "tiny-listed" in side
    at = _app({"fine": "tiny-listed"}, "pages/models.py")
    assert at.selectbox(key="fine_choice").value == "tiny-listed"
    settings = serving.settings()
    serving.check_model_allowed("tiny-listed", settings)
    with pytest.raises(DemoRestrictedError, match="tiny-listed"):
        serving.check_model_allowed("Qwen/Qwen2.5-0.5B", settings)
    # the vectors page's override fields offer the same list, nothing typed
    at = _app({"vsrc": "override"}, "pages/vectors.py")
    assert at.selectbox(key="vt").options == serving.demo_models(settings)
