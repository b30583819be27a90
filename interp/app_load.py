"""Many browser sessions on one running app at once: errors, cross-talk and latency.

One headless Chromium (Playwright, asyncio API) opens ``n`` isolated browser contexts
(separate cookies and Streamlit sessions) on a server on 127.0.0.1. Session ``i`` runs
scenario ``i % 4``, each the key interaction of a page, with its own state:

``models``   open ``/models`` with session ``i``'s own organism problem as the prompt,
             press *Generate*; result: both models' greedy generations.
``vectors``  open ``/vectors`` (override models: grpo − sft on instruct) at session
             ``i``'s own α and problem, press → on the α slider (α + 0.25); result: the
             per-token KL of the trace (the page's hover titles, in nats).
``length``   open ``/length`` at one view, switch to the next view; result: the view
             in the URL and the titles of its figures.
``adapters`` open ``/adapters`` at one loss term, switch to the next term; result: the
             term in the URL and the curve figure's title.

Sessions open their pages a few at a time (``open_parallel``: page loads are mostly
the browser's own work, which on the test machine competes with the server for the
same cores), wait until the page has rendered, then all perform their interaction at
the same moment. Each result is compared with an expectation computed apart from
the app: generations and KL traces by calling ``interp`` directly in this process (no
streamlit), view and term results from one session doing the same thing alone first.
A result that differs is *cross-talk*; an exception box, an error message or a timeout
is an *error*. Latency is from the action until the page has finished its rerun and
shows the result.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

SETTLED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.getAttribute('data-test-script-state') === 'notRunning'
    && app.getAttribute('data-test-connection-state') === 'CONNECTED'
    && !document.querySelector('[data-testid="stSkeleton"]')
    && !document.querySelector('[data-testid="stStatusWidget"]');
}"""
PROBLEMS_JS = """() => {
  const q = s => Array.from(document.querySelectorAll(s));
  return q('[data-testid="stException"]').map(e => 'exception: ' + e.innerText.slice(0, 300))
    .concat(q('[data-testid="stAlertContentError"]')
      .map(e => 'error: ' + e.innerText.slice(0, 300)));
}"""
CHART_TITLES_JS = """() => Array.from(document.querySelectorAll(
  '[data-testid="stPlotlyChart"] .gtitle')).map(e => e.textContent)"""
KL_TITLES_JS = """() => Array.from(document.querySelectorAll('span[title^="KL "]'))
  .map(e => e.getAttribute('title'))"""

SCENARIOS = ("models", "vectors", "length", "adapters")
LENGTH_VIEWS = ("Lengths", "Direction", "α sweep", "Accuracy vs length", "Heads", "Edit",
                "SEAL")
ADAPTER_TERMS = ("loss", "kl", "l1", "nmse", "bridge", "l0", "dead", "tokens_per_s")
MAX_NEW = 16          # new tokens of the models scenario's generations
TIMEOUT_S = 180.0     # per step of a session (open, interaction)


# ------------------------------------------------------------------ session states
def organism_prompt(i: int) -> str:
    """Session ``i``'s own organism problem (distinct for i < 10,000)."""
    a, b = (1000 + 37 * i) % 10_000, (2000 + 53 * i) % 10_000
    return (f"Q add {' '.join(f'{a:04d}')} + {' '.join(f'{b:04d}')} = <think>")


def vectors_state(i: int) -> tuple[float, float, int]:
    """(α in the link, α after the interaction, problem index) of session ``i``."""
    alpha = -2.5 + 0.25 * (i % 21)  # within the slider's [-3, 3], room for one step
    return alpha, alpha + 0.25, i % 500


def start_url(base: str, scenario: str, i: int) -> str:
    if scenario == "models":
        q = {"prompt": organism_prompt(i), "max_new": str(MAX_NEW)}
    elif scenario == "vectors":
        a, _, prob = vectors_state(i)
        q = {"vsrc": "override", "valpha": f"{a:g}", "vprob": str(prob)}
    elif scenario == "length":
        q = {"ltab": LENGTH_VIEWS[i % len(LENGTH_VIEWS)]}
    else:
        q = {"term": ADAPTER_TERMS[i % len(ADAPTER_TERMS)]}
    return f"{base}/{scenario}?" + urllib.parse.urlencode(q)


# ------------------------------------------------------------------ expectations
def expected_generations(prompts: list[str], max_new: int = MAX_NEW,
                         max_chars: int | None = 600) -> dict[str, list[str]]:
    """Each prompt's greedy generations by the default pair, computed here (as the
    Models page does, without the app)."""
    from .generation import encode_user_prompt, generate
    from .models import DEFAULT_PAIR, load_model

    out: dict[str, list[str]] = {p: [] for p in prompts}
    for spec in DEFAULT_PAIR:
        model = load_model(spec, device="auto", dtype="auto")
        for p in prompts:
            ids = encode_user_prompt(model.tokenizer, p, chat=False, max_chars=max_chars,
                                     max_new_tokens=max_new, n_ctx=model.cfg.n_ctx)
            g = generate(model, [ids], max_new_tokens=max_new, temperature=0.0)[0]
            out[p].append(g.text or "(no text)")
    return out


def expected_kl(states: list[tuple[float, int]]) -> dict[tuple[float, int], list[float]]:
    """The KL (nats) each token of the Reasoning vectors trace is shaded with, for the
    page's default override task vector (grpo − sft on instruct, all groups, all blocks) at
    (α, problem), computed here without the app."""
    from .models import load_model
    from .organisms import task as T
    from .vectors import views
    from .vectors.sweep import organism_batch
    from .vectors.task import GROUPS, Mask

    model = load_model("organism:instruct", device="auto", dtype="auto")
    modify_at = views.task_modify(model, "organism:grpo", "organism:sft",
                                  Mask(tuple(GROUPS), None))
    out = {}
    for alpha, prob in states:
        problem = T.sample_problems(prob + 1, seed=0, split="eval")[-1]
        b = organism_batch([problem], "think")
        tv = views.trace_view(model, modify_at, b.seqs[0], alpha, None, 64, 5, "nats")
        kls = [r["kl_nats"] for r in tv["records"]]
        out[(alpha, prob)] = [kls[i - 1] if i > 0 else 0.0 for i in range(len(kls))]
    return out


def _normalise(text: str) -> str:
    return " ".join(text.split())


def same_kl(got: list[str], want: list[float], rel: float = 2e-3) -> bool:
    vals = []
    for t in got:
        m = re.fullmatch(r"KL (\S+) nats", t)
        if m is None:
            return False
        vals.append(float(m.group(1)))
    return len(vals) == len(want) and all(
        math.isclose(a, b, rel_tol=rel, abs_tol=1e-5) for a, b in zip(vals, want))


def option(page, label: str):
    """The clickable option ``label`` of a radio or segmented control (sync or async
    Playwright page; a radio's input itself is hidden under its label)."""
    return page.locator("[data-testid='stRadio'] label, [data-testid='stButtonGroup'] button"
                        ).filter(has_text=re.compile(f"^{re.escape(label)}$"))


# ------------------------------------------------------------------ one session
@dataclass
class SessionResult:
    index: int
    scenario: str
    open_seconds: float | None = None
    interaction_seconds: float | None = None
    result: Any = None
    errors: list[str] = field(default_factory=list)
    cross_talk: str | None = None


async def settle(page, timeout_s: float = TIMEOUT_S) -> None:
    await page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)


async def wait_url(page, test: Callable[[dict[str, list[str]]], bool],
                   timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.perf_counter() + timeout_s
    while not test(urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the URL did not change as expected: {page.url}")
        await asyncio.sleep(0.02)


async def open_page(page, url: str, ready: str, timeout_s: float = TIMEOUT_S) -> float:
    t = time.perf_counter()
    await page.goto(url, timeout=timeout_s * 1000)
    await page.wait_for_selector(ready, timeout=timeout_s * 1000, state="visible")
    await settle(page, timeout_s)
    return time.perf_counter() - t


READY = {"models": "[data-testid='stPlotlyChart']", "vectors": "span[title^='KL ']",
         "length": "[data-testid='stPlotlyChart']", "adapters": "[data-testid='stPlotlyChart']"}


async def interact(page, scenario: str, i: int) -> Any:
    """Session ``i``'s interaction; returns once the page shows its result (the result)."""
    if scenario == "models":
        await page.get_by_role("button", name="Generate").click()
        await wait_url(page, lambda q: q.get("gen") == ["1"])
        await settle(page)
        await page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=\"stColumn\"] "
            "[data-testid=\"stCode\"]').length >= 2", timeout=TIMEOUT_S * 1000)
        codes = page.locator("[data-testid='stColumn'] [data-testid='stCode']")
        return [_normalise(t) for t in await codes.all_inner_texts()]
    if scenario == "vectors":
        _, after, _ = vectors_state(i)
        thumb = page.locator("[data-testid='stSlider'] input[type='range']").first
        await thumb.focus()
        await thumb.press("ArrowRight")
        # the page drops valpha from the URL at its default, 1
        await wait_url(page, lambda q: abs(float(q.get("valpha", ["1"])[0]) - after) < 1e-9)
        await settle(page)
        await page.get_by_text(f"One trace at α = {after:g}").wait_for(
            timeout=TIMEOUT_S * 1000)
        return await page.evaluate(KL_TITLES_JS)
    if scenario == "length":
        nxt = LENGTH_VIEWS[(i + 1) % len(LENGTH_VIEWS)]
        await option(page, nxt).click()
        await wait_url(page, lambda q: q.get("ltab", ["Lengths"]) == [nxt])
        await settle(page)
        return [nxt, *await page.evaluate(CHART_TITLES_JS)]
    nxt = ADAPTER_TERMS[(i + 1) % len(ADAPTER_TERMS)]
    await option(page, nxt).click()
    await wait_url(page, lambda q: q.get("term", ["kl"]) == [nxt])
    await settle(page)
    return [nxt, *await page.evaluate(CHART_TITLES_JS)]


async def run_session(browser, base: str, i: int, opened: asyncio.Barrier,
                      opening: asyncio.Semaphore, screenshot: str | None = None
                      ) -> SessionResult:
    scenario = SCENARIOS[i % len(SCENARIOS)]
    r = SessionResult(i, scenario)
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await ctx.new_page()
        async with opening:
            try:
                r.open_seconds = await open_page(page, start_url(base, scenario, i),
                                                 READY[scenario])
            except Exception as e:  # noqa: BLE001 - a failed session is a counted error
                r.errors.append(f"open: {type(e).__name__}: {str(e)[:300]}")
        await opened.wait()  # every session interacts at the same time
        if not r.errors:
            t = time.perf_counter()
            try:
                r.result = await interact(page, scenario, i)
                r.interaction_seconds = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001
                r.errors.append(f"interaction: {type(e).__name__}: {str(e)[:300]}")
        try:
            r.errors += await page.evaluate(PROBLEMS_JS)
            if screenshot:
                await page.screenshot(path=screenshot)
        except Exception as e:  # noqa: BLE001
            r.errors.append(f"page: {type(e).__name__}: {str(e)[:200]}")
    finally:
        await ctx.close()
    return r


async def _sessions(base: str, indices: list[int], chromium: str, args: list[str],
                    shots: str | None, open_parallel: int) -> list[SessionResult]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=args)
        try:
            opened = asyncio.Barrier(len(indices))
            opening = asyncio.Semaphore(open_parallel)
            return list(await asyncio.gather(*[
                run_session(browser, base, i, opened, opening,
                            f"{shots}/session-{i:02d}-{SCENARIOS[i % 4]}.png" if shots else None)
                for i in indices]))
        finally:
            await browser.close()


def run_sessions(base: str, indices: list[int], chromium: str, args: list[str],
                 screenshots: str | None = None, open_parallel: int = 4
                 ) -> list[SessionResult]:
    """Run the sessions ``indices`` together (see the module doc); no checks."""
    return asyncio.run(_sessions(base, indices, chromium, args, screenshots, open_parallel))


# ------------------------------------------------------------------ expectations + checks
def expectations(base: str, indices: list[int], chromium: str, args: list[str]
                 ) -> dict[int, Any]:
    """Each session's expected result (compare with :func:`matches`): generations and KL
    traces computed here, view and term results from the same session run alone first
    (one at a time)."""
    want: dict[int, Any] = {}
    models = [i for i in indices if SCENARIOS[i % 4] == "models"]
    vectors = [i for i in indices if SCENARIOS[i % 4] == "vectors"]
    gens = expected_generations([organism_prompt(i) for i in models]) if models else {}
    for i in models:
        want[i] = [_normalise(t) for t in gens[organism_prompt(i)]]
    states = {i: (vectors_state(i)[1], vectors_state(i)[2]) for i in vectors}
    kls = expected_kl(sorted(set(states.values()))) if vectors else {}
    for i in vectors:
        want[i] = kls[states[i]]
    alone: dict[tuple[str, int], Any] = {}
    for i in indices:
        scenario = SCENARIOS[i % 4]
        if scenario in ("length", "adapters"):
            key = (scenario, i % (len(LENGTH_VIEWS) if scenario == "length"
                                  else len(ADAPTER_TERMS)))
            if key not in alone:
                (r,) = run_sessions(base, [i], chromium, args)
                if r.errors:
                    raise RuntimeError(f"session {i} alone failed: {r.errors}")
                alone[key] = r.result
            want[i] = alone[key]
    return want


def matches(scenario: str, got: Any, want: Any) -> bool:
    """A session's result equals its expectation (KL values to 0.2%)."""
    return same_kl(got, want) if scenario == "vectors" else got == want


def load_test(base: str, n: int, chromium: str, args: list[str],
              screenshots: str | None = None, offset: int = 0, open_parallel: int = 4
              ) -> dict[str, Any]:
    """``n`` sessions together; errors, cross-talk and latency percentiles."""
    import numpy as np

    indices = list(range(offset, offset + n))
    want = expectations(base, indices, chromium, args)
    t0 = time.perf_counter()
    results = run_sessions(base, indices, chromium, args, screenshots, open_parallel)
    wall = time.perf_counter() - t0
    for r in results:
        if not r.errors and not matches(r.scenario, r.result, want[r.index]):
            r.cross_talk = f"session {r.index} ({r.scenario}) showed {str(r.result)[:300]}"
    lat = [r.interaction_seconds for r in results if r.interaction_seconds is not None]
    opens = [r.open_seconds for r in results if r.open_seconds is not None]

    def pct(xs: list[float], q: float) -> float | None:
        return float(np.percentile(xs, q)) if xs else None

    return {"sessions": n, "errors": sum(bool(r.errors) for r in results),
            "cross_talk": sum(r.cross_talk is not None for r in results),
            "p50_interaction_seconds": pct(lat, 50), "p95_interaction_seconds": pct(lat, 95),
            "max_interaction_seconds": max(lat) if lat else None,
            "p95_open_seconds": pct(opens, 95), "wall_seconds": wall,
            "open_parallel": open_parallel,
            "per_scenario_p95": {s: pct([r.interaction_seconds for r in results
                                         if r.scenario == s and r.interaction_seconds], 95)
                                 for s in SCENARIOS},
            "problems": [f"session {r.index} ({r.scenario}): {e}" for r in results
                         for e in r.errors] + [r.cross_talk for r in results if r.cross_talk]}
