""""Reproduce in Python": for each view of the app, the few lines of ``interp`` API that
recompute its figure with the view's current settings, to continue in a notebook.

One function per view, each returning the code as text (the pages show it in an
expander). Every snippet runs as it is in a fresh interpreter from the project root and
leaves the figure's numbers in a variable named ``result`` (its last lines say what it
holds); the tests execute each one and compare ``result`` with what the page computes.
"""

from __future__ import annotations

import pprint
from typing import Any, Sequence

# (store name on the pages) -> (import line, expression)
_STORES = {"demo": None, "local": ("from interp.store import Store", "Store()")}


def _lit(value: Any) -> str:
    return pprint.pformat(value, width=88, sort_dicts=False)


def _join(lines: Sequence[str]) -> str:
    return "\n".join(lines).strip() + "\n"


def _store_lines(store: str, demo_import: str) -> tuple[str, str]:
    if store == "demo":
        return demo_import, "demo_store()"
    imp, expr = _STORES.get(store) or _STORES["local"]
    return imp, expr


# ------------------------------------------------------------------ reasoning vectors
def vectors_task_stats(donor_a: str, donor_b: str, target: str, reference: str | None,
                       mask: dict[str, Any] | None) -> str:
    """The task vector's norms and cosines per layer (``result`` = the per-layer table)."""
    return _join([
        "from interp.vectors import views",
        "from interp.vectors.task import Mask",
        "",
        f"mask = Mask.from_config({_lit(mask)})",
        f"stats = views.task_stats_view({donor_a!r}, {donor_b!r}, {target!r}, {reference!r}, "
        "mask)",
        "result = stats[\"by_layer\"]   # per block: ‖v‖, cosines (stats['table']: per tensor)",
    ])


def _control_lines(target: str, layer: int, site: str, kind: str, n_control: int,
                   positive_fmt: str, negative_fmt: str) -> list[str]:
    return [
        "from interp.organisms import task as T",
        "",
        f"problems = T.sample_problems({int(n_control)}, seed=0, split=\"train\")",
        f"positives = [T.prompt_text(p, {positive_fmt!r}) for p in problems]",
        f"negatives = [T.prompt_text(p, {negative_fmt!r}) for p in problems]",
        f"ctrl = views.build_control(model, positives, "
        f"{'None' if kind == 'R' else 'negatives'}, {int(layer)}, {kind!r}, {site!r})",
    ]


def vectors_control(target: str, layer: int, site: str, kind: str, n_control: int,
                    positive_fmt: str, negative_fmt: str, device: str = "auto") -> str:
    """The control vector and its logit lens (``result`` = the lens, raw and through the
    final norm)."""
    return _join([
        "from interp.models import load_model",
        "from interp.vectors import views",
        "",
        f"model = load_model({target!r}, device={device!r})",
        *_control_lines(target, layer, site, kind, n_control, positive_fmt, negative_fmt),
        "vector = ctrl[\"vector\"]   # a ControlVector: .vector, .hook, .info",
        "result = {\"raw\": ctrl[\"lens_raw\"], \"normed\": ctrl[\"lens_norm\"]}",
    ])


def vectors_trace(spec: dict[str, Any], alpha: float, *, problem: int | None = None,
                  text: str | None = None, own: bool = False, max_new_tokens: int = 64,
                  unit: str = "nats", device: str = "auto",
                  positions: Sequence[int] | None = None) -> str:
    """One trace at ``alpha``: per-token KL / entropies and the layer × token KL
    (``result`` = the view's dict: ``records`` per token, ``layer_kl``, ``own``;
    ``heat``: the heatmap's columns at ``positions``, when given)."""
    lines = ["from interp.models import load_model", "from interp.vectors import views"]
    if spec["kind"] == "task":
        lines += ["from interp.vectors.task import Mask", "",
                  f"model = load_model({spec['target']!r}, device={device!r})",
                  f"mask = Mask.from_config({_lit(spec.get('mask'))})",
                  f"modify_at = views.task_modify(model, {spec['donor_a']!r}, "
                  f"{spec['donor_b']!r}, mask)"]
    else:
        lines += ["", f"model = load_model({spec['target']!r}, device={device!r})",
                  *_control_lines(spec["target"], spec["layer"], spec["site"],
                                  spec["vector_kind"], spec["n_control"],
                                  spec.get("positive_fmt", "think"),
                                  spec.get("negative_fmt", "direct")),
                  "modify_at = views.control_modify(model, ctrl[\"vector\"])"]
    if text:
        lines += [f"text = {text!r}",
                  "tokens = model.tokenizer(text, add_special_tokens=True)[\"input_ids\"]",
                  f"own_prompt = {'text' if own else 'None'}"]
    else:
        lines += ["from interp.organisms import task as T",
                  "from interp.vectors.sweep import organism_batch",
                  f"problem = T.sample_problems({int(problem or 0) + 1}, seed=0, "
                  "split=\"eval\")[-1]",
                  "tokens = organism_batch([problem], \"think\").seqs[0]",
                  "own_prompt = " + ("T.prompt_text(problem, \"think\")" if own else "None")]
    lines += [f"result = views.trace_view(model, modify_at, tokens, {float(alpha)!r}, "
              f"own_prompt, {int(max_new_tokens)}, 5, {unit!r})",
              "# result[\"records\"]: per token KL(P_orig ‖ P_mod), entropies, top changes;",
              "# result[\"layer_kl\"]: [n_layers, positions] logit-lens KL"]
    if positions:
        lines += [f"heat = result[\"layer_kl\"][:, {[int(p) for p in positions]!r}]   "
                  "# the heatmap's positions"]
    return _join(lines)


def vectors_sweep(spec: dict[str, Any], part: str = "sweep", device: str = "auto") -> str:
    """The α sweep (``part="sweep"``: KL / entropy / answer mass per α and prompt) or the
    accuracy sweep (``part="accuracy"``) of an experiment, computed again into the
    default store (``result`` = the artifact's tensors as arrays)."""
    from .vectors.demo import DEFAULT_SPEC

    given = {k: v for k, v in spec.items() if k in DEFAULT_SPEC and v != DEFAULT_SPEC[k]}
    kind = {"sweep": "vectors.sweep", "accuracy": "vectors.accuracy"}[part]
    return _join([
        "from interp.store import Store",
        "from interp.vectors.demo import run_experiment",
        "",
        f"spec = {_lit(given)}   # the rest: interp.vectors.demo.DEFAULT_SPEC",
        "store = Store()",
        f"keys = run_experiment(spec, store, device={device!r}, parts=({part!r},))",
        f"art = store.load({kind!r}, keys[{part!r}])",
        "result = {k: t.numpy() for k, t in art.tensors.items()}",
        "# " + ("result[metric][a, i]: kl_last, kl_trace, entropy_last, entropy_trace, "
                "p_correct at α = result['alphas'][a]" if part == "sweep" else
                "result['correct'][a, i], result['think_tokens'][a, i] at α = "
                "result['alphas'][a]"),
    ])


# ------------------------------------------------------------------ reasoning length
LENGTH_VIEWS = ("Lengths", "Direction", "α sweep", "Accuracy vs length", "Heads", "Edit",
                "SEAL")


def length_view(view: str, store: str, key: str, **settings: Any) -> str:
    """One view of a Reasoning length run (``store`` "demo" or "local", ``key`` the run).
    ``settings``: ``bin_width``, ``overflow`` (Lengths, α sweep histograms), ``alphas``
    (the α values of the α sweep's histograms), ``site`` (Direction), ``top_k`` (Heads).
    ``result`` = the figure's table (a DataFrame)."""
    imp, expr = _store_lines(store, "from interp.length.report import demo_store")
    lines = ["from interp.length import plots as lp", "from interp.length.pipeline import "
             "load_run", imp, "", f"run = load_run({expr}, {key!r})"]
    bw, over = int(settings.get("bin_width", 10)), int(settings.get("overflow", 80))
    if view == "Lengths":
        lines += ["ed = run[\"edit\"]",
                  "series = {\"direction set\": [r[\"think_tokens\"] for r in "
                  "run[\"generations\"][\"records\"]],",
                  "          \"eval, before edit\": [r[\"think_tokens\"] for r in "
                  "ed[\"records_before\"]],",
                  "          \"eval, after edit\": [r[\"think_tokens\"] for r in "
                  "ed[\"records_after\"]]}",
                  f"result = lp.histogram_frame(series, {bw}, {over})",
                  f"fig = lp.histogram_figure(result, {bool(settings.get('norm', True))}, "
                  "\"thinking-length histogram\")"]
    elif view == "Direction":
        site = settings.get("site")
        lines += ["d = run[\"direction\"]",
                  "result = lp.separability_frame(d[\"auroc\"], d[\"probe_accuracy\"], "
                  "d[\"norms\"])",
                  "fig = lp.separability_figure(result, \"held-out separability per layer\")",
                  f"cosine = run[\"cosine\"][{site!r}]   # cos(dir_l, dir_l') at this site"
                  if site else "cosine = run[\"cosine\"]   # per site: cos(dir_l, dir_l')"]
    elif view == "α sweep":
        alphas = [float(a) for a in settings.get("alphas") or []]
        lines += ["sw = run[\"sweep\"]",
                  "result = lp.sweep_frame(sw[\"per_alpha\"])",
                  "fig = lp.sweep_figure(result, \"all-layer steering: length, accuracy, "
                  "short fraction vs α\")"]
        if alphas:
            lines += [f"shown = {alphas!r}   # α values of the histograms",
                      "n = sw[\"per_alpha\"][0][\"n\"]",
                      "series = {f\"α={p['alpha']:g}\": [r[\"think_tokens\"] for r in "
                      "sw[\"records\"][k * n:(k + 1) * n]]",
                      "          for k, p in enumerate(sw[\"per_alpha\"]) "
                      "if any(abs(p[\"alpha\"] - a) < 1e-9 for a in shown)}",
                      f"histograms = lp.histogram_frame(series, {bw}, {over})"]
    elif view == "Accuracy vs length":
        lines += ["groups = {\"before edit\": run[\"edit\"][\"records_before\"],",
                  "          \"after edit\": run[\"edit\"][\"records_after\"]}",
                  "result = lp.shortest_frame(groups)",
                  "cumulative = lp.cumulative_frame(groups)"]
    elif view == "Heads":
        k = settings.get("top_k")
        lines[0:0] = ["import torch", "", "from interp.length.heads import top_heads"]
        lines += ["scores = run[\"head_scores\"]   # [layer, head]: mean write onto the "
                  "short direction",
                  f"top = top_heads(torch.from_numpy(scores), {int(k)})" if k else
                  "top = run[\"heads\"][\"top\"]   # the heads the run edited",
                  "result = lp.head_frame(scores)",
                  "fig = lp.head_figure(scores, [(t[\"layer\"], t[\"head\"]) for t in top], "
                  "\"each head's mean write onto the unit short direction\")"]
    elif view == "Edit":
        lines += ["ed = run[\"edit\"]",
                  "modes = ed.get(\"modes\") or {ed.get(\"mode\", \"project\"): ed}",
                  "result = lp.edit_frame(ed[\"before\"], {f\"after {k}\": v[\"after\"] "
                  "for k, v in modes.items()})"]
    elif view == "SEAL":
        lines += ["seal = run[\"seal\"]",
                  "result = lp.sweep_frame(seal[\"sweep\"])   # hesitations, thinking "
                  "tokens, accuracy per SEAL α"]
    else:
        from .errors import ConfigError

        raise ConfigError(f"no Reasoning length view {view!r}; views: "
                          f"{', '.join(LENGTH_VIEWS)}")
    return _join(lines)


def length_sweep_job(spec: dict[str, Any]) -> str:
    """Another α sweep on a run's direction (the ``length.sweep`` job, stage ``sweep``),
    run in this process (``result`` = the per-α summary table)."""
    return _join([
        "from interp import jobs",
        "from interp.length import plots as lp",
        "from interp.store import Store",
        "",
        f"spec = {_lit(spec)}",
        "status = jobs.run_inline(\"length.sweep\", spec)   # a job already done is returned",
        "art = Store().load(\"length_sweep\", status.result[\"key\"])",
        "result = lp.sweep_frame(art.meta[\"per_alpha\"])   # length, accuracy, short "
        "fraction per α",
        "fig = lp.sweep_figure(result, \"all-layer steering: length, accuracy, short "
        "fraction vs α\")",
    ])


# ------------------------------------------------------------------ features
def feature_clamps(source: dict[str, Any], prompt: str, layer: int, feature: int,
                   clamps: Sequence[float], max_new_tokens: int, device: str = "auto") -> str:
    """A feature ablated and clamped to each value in generation (``result`` = per run:
    the text, its token count and hesitation words)."""
    return _join([
        "from interp.features.source import load_source",
        "from interp.features.steer import clamp_generations",
        "",
        f"source = load_source({_lit(source)}, {device!r})",
        f"result = clamp_generations(source, {prompt!r}, {int(layer)}, {int(feature)}, "
        f"{[float(c) for c in clamps]!r}, {int(max_new_tokens)})",
        "# result[\"original\"], result[\"ablated\"], result[\"clamped 2.5\"], ...: "
        "text, n_tokens, hesitations",
    ])


# ------------------------------------------------------------------ models
def models_weights(base: str, fine: str, metric: str = "relative") -> str:
    """Where the weights moved (``result`` = the layer × module heatmap's table)."""
    return _join([
        "from interp.models import local_checkpoint",
        "from interp.weights import weight_diff_groups, weight_diff_pivot, weight_diff_table",
        "",
        f"table = weight_diff_table(local_checkpoint({base!r})[1], "
        f"local_checkpoint({fine!r})[1])",
        f"result = weight_diff_pivot(table, {metric!r})   # by layer and module",
        "by_block = weight_diff_groups(table)             # the bars",
    ])


def models_generate(base: str, fine: str, prompt: str, chat: bool, max_new_tokens: int,
                    device: str = "auto", dtype: str = "auto") -> str:
    """Both models' greedy continuations of one prompt (``result`` = role -> text)."""
    return _join([
        "from interp.generation import encode_user_prompt, generate",
        "from interp.models import load_model",
        "",
        f"prompt = {prompt!r}",
        "result = {}",
        f"for role, spec in ((\"base\", {base!r}), (\"fine\", {fine!r})):",
        f"    model = load_model(spec, device={device!r}, dtype={dtype!r})",
        f"    ids = encode_user_prompt(model.tokenizer, prompt, chat={bool(chat)!r}, "
        f"max_new_tokens={int(max_new_tokens)},",
        "                             n_ctx=model.cfg.n_ctx)",
        f"    g = generate(model, [ids], max_new_tokens={int(max_new_tokens)}, "
        "temperature=0.0)[0]",
        "    result[role] = g.text",
    ])


def amplify_samples(base: str, fine: str, prompt: str, alphas: Sequence[float],
                    n_samples: int, max_new_tokens: int, temperature: float, seed: int,
                    device: str = "auto", dtype: str = "auto") -> str:
    """Amplified sampling at each α (``result`` = the per-α hesitation summary)."""
    return _join([
        "from interp.amplify import amplify",
        "from interp.generation import encode_user_prompt",
        "from interp.models import load_model",
        "",
        f"base = load_model({base!r}, device={device!r}, dtype={dtype!r})",
        f"fine = load_model({fine!r}, device={device!r}, dtype={dtype!r})",
        f"ids = encode_user_prompt(fine.tokenizer, {prompt!r}, "
        f"max_new_tokens={int(max_new_tokens)},",
        "                         n_ctx=fine.cfg.n_ctx)",
        f"amp = amplify(base, fine, ids, {_lit([float(a) for a in alphas])}, "
        f"n_samples={int(n_samples)},",
        f"              max_new_tokens={int(max_new_tokens)}, "
        f"temperature={float(temperature)!r}, seed={int(seed)}, words=(\"wait\",))",
        "result = amp.summary   # per α: hesitations per sample (± s.e.m.), share, new tokens",
        "samples = amp.samples  # one row per sample: α, text, new tokens, hesitations",
    ])


# ------------------------------------------------------------------ adapters
def adapters_curves(runs: dict[str, tuple[str, str]], term: str, smooth: int,
                    logy: bool) -> str:
    """Training curves of saved adapter runs (``runs``: label -> (store, artifact key);
    ``result`` = the curves' table)."""
    lines = ["from interp.adapters import plots as ap",
             "from interp.adapters.io import history_of",
             "from interp.adapters.report import demo_store",
             "from interp.store import Store", "",
             "stores = {\"demo\": demo_store(), \"local\": Store()}",
             f"runs = {_lit(runs)}   # label: (store, adapters artifact key)",
             "curves = {label: history_of(stores[s].load(\"adapters\", key))",
             "          for label, (s, key) in runs.items()}",
             "result = ap.curves_frame(curves)",
             f"fig = ap.loss_curves(result, {term!r}, {int(smooth)}, {bool(logy)})"]
    return _join(lines)


def adapters_eval(store: str, key: str, view: str) -> str:
    """Figures of a saved adapter evaluation (``key``: an ``adapters_eval`` artifact;
    ``view``: ``detail``, ``result`` = the per-layer table, ``bridged`` = the KL per
    number of bridged layers; or ``behaviour``, ``result`` = the behaviour table)."""
    lines = ["from interp.adapters import plots as ap",
             "from interp.adapters.report import demo_store",
             "from interp.store import Store", "",
             f"ev = {'demo_store()' if store == 'demo' else 'Store()'}.load(\"adapters_eval\", "
             f"{key!r})"]
    if view == "detail":
        lines += ["fa = ev.meta[\"faithfulness\"]", "result = ap.per_layer_frame(fa)",
                  "fig = ap.per_layer_figure(fa)",
                  "bridged = {\"a2r\": fa[\"bridged_a2r\"], \"r2a\": fa[\"bridged_r2a\"]}",
                  "fig_bridged = ap.bridged_figure(fa)"]
    else:
        lines += ["be = ev.meta[\"behaviour\"]", "result = ap.behaviour_table(be)",
                  "fig = ap.behaviour_figure(be)"]
    return _join(lines)


def hesitation_study(store: str, key: str, ranking: str = "logit_diff", n: int = 30) -> str:
    """A saved hesitation study's tables (``result`` = the necessity table of the
    evaluated sets; ``ranking``, ``clusters``, ``candidates`` and the selection ``path``
    as the page shows them) and its necessity figure."""
    return _join([
        "from interp.adapters.report import demo_store",
        "from interp.attribution import study_view as V",
        "from interp.store import Store", "",
        f"study = {'demo_store()' if store == 'demo' else 'Store()'}.load("
        f"\"hesitation_study\", {key!r})",
        "result = V.headline_table(study)",
        f"ranking = V.ranking_table(study, {ranking!r}, {int(n)})",
        "clusters = V.clusters_table(study)",
        "candidates = V.candidates_table(study)",
        "path = V.selection_path(study)",
        "fig = V.necessity_figure(study)"])


def adapters_frontier(sweeps: Sequence[tuple[str, str]]) -> str:
    """The sparsity-faithfulness frontier of saved L1 sweeps (``sweeps``: (store, key) of
    each ``adapters_sweep``; ``result`` = the frontier's table)."""
    return _join([
        "from interp.adapters import plots as ap",
        "from interp.adapters.report import demo_store",
        "from interp.store import Store",
        "",
        "stores = {\"demo\": demo_store(), \"local\": Store()}",
        f"sweeps = {_lit([list(x) for x in sweeps])}",
        "points = [p for s, key in sweeps for p in stores[s].load(\"adapters_sweep\", key)"
        ".meta.get(\"runs\", [])]",
        "result = ap.frontier_frame(points)",
        "fig = ap.frontier_figure(points)",
    ])


# ------------------------------------------------------------------ hesitation graphs
def hesitation_graph(*, adapters_root: str, adapters_key: str, explain: str,
                     node_threshold: float, edge_threshold: float, node_cap: int,
                     labels: dict | None = None, vocab: int = 0,
                     tokens: Sequence[int] | None = None, target_kind: str = "logit",
                     target_token: int | None = None, max_feature_nodes: int = 0,
                     device: str = "auto", graph_root: str | None = None,
                     graph_key: str | None = None) -> str:
    """The attribution graph of the view, pruned as shown (``result`` = the visible
    nodes and edges, a :class:`~interp.attribution.explore.GraphView`). A saved graph
    (``graph_root`` / ``graph_key``) is loaded; otherwise it is computed on ``tokens``
    for the target (``logit`` of ``target_token`` or its ``logit-diff``)."""
    lines = ["from interp.attribution import artifacts as ga",
             "from interp.attribution import explore",
             "from interp.attribution.prune import prune",
             "from interp.store import Store", ""]
    if graph_key:
        lines += [f"art = Store({graph_root!r}, read_only=True).load(ga.KIND, {graph_key!r})",
                  f"adapters = Store({adapters_root!r}, read_only=True).load(\"adapters\", "
                  f"{adapters_key!r})" if adapters_root else "adapters = None",
                  "graph = ga.load_graph(art, adapters=adapters)"]
    else:
        target = ("LogitTarget(token, -1)" if target_kind == "logit"
                  else "LogitDiffTarget(token, None, -1)")
        lines[0:0] = ["from interp.adapters.evaluate import load_adapter_model",
                      "from interp.attribution.hesitation import Tracer",
                      "from interp.attribution.targets import LogitDiffTarget, LogitTarget"]
        lines += [f"adapters = Store({adapters_root!r}, read_only=True).load(\"adapters\", "
                  f"{adapters_key!r})",
                  f"model, base, reasoner = load_adapter_model(adapters, {device!r})",
                  f"tracer = Tracer(model, base, reasoner, key={adapters_key!r}, "
                  f"explain={explain!r})",
                  f"tokens = {[int(t) for t in tokens or []]!r}",
                  f"token = {int(target_token or 0)}",
                  f"graph = tracer.graph(tokens, [{target}], "
                  f"max_feature_nodes={int(max_feature_nodes) or None})"]
    lines += [f"pruned = prune(graph, {float(node_threshold)!r}, {float(edge_threshold)!r}, "
              f"max_nodes={int(node_cap)})",
              f"result = explore.graph_view(graph, pruned, labels={_lit(labels or {})}, "
              f"vocab_size={int(vocab)},",
              "                            effect=graph.total_effect(int(graph.target_ids()"
              "[0])))",
              "# result.nodes, result.edges: the visible graph; result.scores: replacement, "
              "completeness"]
    return _join(lines)


# ------------------------------------------------------------------ features
def feature_card(root: str, key: str, feature: str) -> str:
    """A feature card's figures (``feature``: ``layer:index``; ``result`` = its activation
    histogram; ``regions``, ``lens``, ``aurocs`` the other panels)."""
    return _join([
        "from interp.features import plots as fp",
        "from interp.features.table import FeatureTable",
        "from interp.store import Store",
        "",
        f"tab = FeatureTable(Store({root!r}, read_only=True).load(\"features\", {key!r}))",
        f"g = tab.parse({feature!r})",
        "result = tab.histogram(g)",
        "regions, lens, aurocs = tab.regions(g), tab.lens(g), tab.aurocs(g)",
        "fig = fp.histogram_figure(result, tab.fid(g))",
    ])
