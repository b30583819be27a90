"""Where the CLI finds reports, benchmarks and command groups (imported lazily).

Each report/bench is ``"module:function"``; the function takes the parsed argparse
namespace and returns a JSON-serialisable dict (REPORTS.md lists required keys).
Each command group module exposes ``add_commands(subparsers)``; a module that does
not exist yet is skipped, so capabilities can land one at a time.
"""

REPORTS: dict[str, str] = {
    "organisms": "interp.organisms.report:report_organisms",
    "adapters": "interp.adapters.report:report_adapters",
    "attribution": "interp.attribution.report:report_attribution",
    "length": "interp.length.report:report_length",
    "vectors": "interp.vectors.report:report_vectors",
    "features": "interp.features.report:report_features",
}

BENCHES: dict[str, str] = {
    "app-latency": "interp.bench_app:bench_app_latency",
    "adapters-step": "interp.adapters.bench:bench_adapters_step",
    "attribution-scaling": "interp.attribution.bench:bench_attribution_scaling",
    "attribution-vs-circuit-tracer":
        "interp.attribution.bench:bench_attribution_vs_circuit_tracer",
    "length-sweep": "interp.length.bench:bench_length_sweep",
    "vectors-sweep": "interp.vectors.bench:bench_vectors_sweep",
    "features-collect": "interp.features.bench:bench_features_collect",
}

COMMAND_MODULES: list[str] = [
    "interp.models_cli",
    "interp.organisms.cli",
    "interp.adapters.cli",
    "interp.length.cli",
    "interp.vectors.cli",
    "interp.attribution.cli",
    "interp.features.cli",
    "interp.tasks.cli",
    "interp.estimate",
    "interp.transcoders",
    "interp.jobs",
    "interp.store_cli",
    "interp.distributed",
]
