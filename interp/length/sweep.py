"""Background jobs of the length workflow (job kind ``length.sweep``).

``spec["stage"]``:

* ``"sweep"`` (default): an α sweep with a saved direction. Spec keys: ``model``,
  ``direction`` (a ``length_direction`` key), ``store`` (``"demo"`` | ``"main"``: where
  the sweep is saved), ``direction_store`` (where the direction is read; default
  ``store``),
  ``alphas`` (None: the default grid), ``site``, ``layers`` (None: all), ``n_prompts``,
  ``source`` / ``prompts`` / ``markers``, sampling keys. Saves a ``length_sweep``.
* ``"pipeline"``: every stage (:func:`interp.length.pipeline.build`) with the spec's
  settings (see ``pipeline.DEFAULTS``).
"""

from __future__ import annotations

from typing import Any

from ..store import Store, provenance


def _store(name: str | None) -> Store:
    from .report import demo_store

    return demo_store(read_only=False) if name == "demo" else Store()


def validate_spec(spec: dict[str, Any]) -> None:
    """The ``length.sweep`` job's spec: every setting typed (see ``pipeline.make_config``)
    plus the sweep stage's own keys."""
    from ..errors import ConfigError
    from ..validate import finite_values, number, one_of
    from .pipeline import DEFAULTS, make_config

    spec = dict(spec)
    stage = one_of(spec.pop("stage", "sweep"), "stage", ("sweep", "pipeline"))
    one_of(spec.pop("store", "main"), "store", ("demo", "main"))
    one_of(spec.pop("direction_store", "main"), "direction_store", ("demo", "main"))
    spec.pop("device", None)
    own = {"direction", "alphas", "site", "layers", "n_prompts"} if stage == "sweep" else set()
    unknown = sorted(set(spec) - set(DEFAULTS) - own - {"prompts"})
    if unknown:
        raise ConfigError(f"unknown length job option(s): {', '.join(unknown)}")
    make_config(**{k: v for k, v in spec.items() if k not in own})
    if stage == "sweep":
        if not isinstance(spec.get("direction"), str):
            raise ConfigError("a length sweep needs 'direction': a length_direction key")
        if spec.get("alphas") is not None:
            finite_values(spec["alphas"], "alphas")
        if spec.get("layers") is not None:
            [number(x, "layers", lo=0, integer=True) for x in spec["layers"]]
        if "n_prompts" in spec:
            number(spec["n_prompts"], "n_prompts", lo=1, integer=True)


def sweep_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    from ..models import load_model
    from .pipeline import DEFAULTS, _markers, build, load_directions, make_config, prompt_set
    from .stats import spearman
    from .steer import alpha_grid, alpha_sweep, compact

    spec = dict(spec)
    stage = spec.pop("stage", "sweep")
    store_name = spec.pop("store", "main")
    store = _store(store_name)
    # where the direction is read (a run of the demo store, a sweep saved in the main one)
    dir_store = _store(spec.pop("direction_store", store_name))
    device = spec.pop("device", "auto")
    if stage == "pipeline":
        cfg = make_config(**{k: v for k, v in spec.items() if k in DEFAULTS or k == "prompts"})
        model = load_model(cfg["model"], device=device)
        return build(model, cfg, store, progress=lambda s, t, **m: ctx.progress(s, t, **m))
    cfg = make_config(**{k: v for k, v in spec.items()
                         if k in DEFAULTS or k == "prompts"})
    model = load_model(cfg["model"], device=device)
    dirs = load_directions(dir_store, spec["direction"])
    site = spec.get("site", cfg["sweep_site"])
    alphas = spec.get("alphas") or alpha_grid(model.cfg.n_layers, cfg["n_alpha"],
                                              "all" if spec.get("layers") is None else 1,
                                              cfg["alpha_scale"])
    prompts, scorer = prompt_set(cfg, spec.get("n_prompts", cfg["n_sweep"]), "eval", 1,
                                 model=model)
    short_max = dirs.meta.get("split", {}).get("short_max_tokens", 0)
    total = len(prompts) * len(alphas)
    sw = alpha_sweep(model, prompts, dirs.dirs[site].to(model.device), alphas, site=site,
                     layers=spec.get("layers"), markers=_markers(cfg, model), scorer=scorer,
                     short_max_tokens=short_max,
                     max_new_tokens=cfg["max_new_tokens"], temperature=cfg["temperature"],
                     top_p=cfg["top_p"], seed=cfg["seed"], batch_size=cfg["batch_size"],
                     progress=lambda d, t: ctx.progress(d, total))
    rho = spearman(alphas, [p["mean_think_tokens"] for p in sw["per_alpha"]])
    art = store.save("length_sweep", {"direction": spec["direction"], "site": site,
                                      "layers": spec.get("layers") or "all", "alphas": alphas,
                                      "n_prompts": len(prompts)},
                     provenance=provenance(models={"model": model.describe()},
                                           seed=cfg["seed"]),
                     meta={"per_alpha": sw["per_alpha"], "records": compact(sw["records"]),
                           "spearman_mean_length_vs_alpha": rho,
                           "short_max_tokens": short_max})
    return {"key": art.key, "spearman": rho,
            "mean_think_tokens": [p["mean_think_tokens"] for p in sw["per_alpha"]]}
