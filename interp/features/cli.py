"""``python -m interp features collect``: a feature collection from the shell.

    python -m interp features collect [--adapters KEY | --transcoders DIR|KEY [--model SPEC]
                                       | --source JSON]
                                      [--traces KEY [--split all] | --corpus FILE|JSON
                                       | --organisms]
                                      [--hesitation WORD ...] [--set NAME=VALUE ...]
                                      [--config JSON] [--ablation top|all|none]
                                      [--map umap|pca|none] [--store main|demo]
                                      [--device D] [--background]

Runs the ``features.collect`` job (resumable: the same command resumes an interrupted
run; a progress bar on stderr) for any pair's adapter set (``--adapters``, default the
newest of your store) or any model's per-layer transcoders (a folder of SAELens folders
with ``--model``, or a ``transcoders`` artifact key), over a trace set's sequences
(``--traces``), a text / JSONL file (``--corpus``), or the organisms' labelled traces
(``--organisms``, organism models only). ``--set`` takes :class:`CollectConfig` fields
(``batch_size=8``, ``max_len=256``, ``top_k=8``). Prints the job's JSON on the last
stdout line (the ``features`` artifact key, tokens, throughput, the map's key).
``--source`` / ``--corpus`` / ``--config`` also take the job's JSON objects as they are
(the Features page submits the same spec). Under ``torchrun`` every rank streams its
share of the corpus and the merged artifact is the one a single process saves (rank 0
prints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def source_spec(args) -> dict[str, Any]:
    """The job's ``source`` from ``--source`` JSON, or ``--adapters`` / ``--transcoders``
    (+ ``--model``)."""
    if sum(bool(x) for x in (args.adapters, args.transcoders, args.source)) > 1:
        raise ConfigError("give one of --adapters, --transcoders or --source")
    if args.source:
        from ..validate import parse_json_object

        return parse_json_object(args.source, "--source")
    if args.transcoders:
        p = Path(args.transcoders).expanduser()
        if p.is_dir():
            if not args.model:
                raise ConfigError("--transcoders DIR needs the model they read (--model SPEC)")
            return {"kind": "transcoders", "model": args.model, "dir": str(p)}
        from ..errors import ArtifactError
        from ..store import Store

        arts = Store().list("transcoders")
        hits = [a for a in arts if a.key.startswith(args.transcoders)]
        if len(hits) != 1:
            raise ArtifactError(
                f"--transcoders {args.transcoders!r} is neither a folder nor one transcoders "
                f"artifact ({len(hits)} match; saved: "
                f"{', '.join(a.key for a in arts[:5]) or 'none'})")
        return {"kind": "transcoders", "model": args.model or hits[0].config.get("model"),
                "dir": str(hits[0].path)}
    if args.model:
        raise ConfigError("--model goes with --transcoders (an adapter set knows its pair)")
    spec: dict[str, Any] = {"kind": "adapters", "store": args.source_store}
    if args.adapters:
        spec["key"] = args.adapters
    return spec


def corpus_spec(args) -> dict[str, Any] | None:
    """The job's ``corpus`` (None: the job's default, the organisms' labelled traces)."""
    given = [x for x in ("traces", "corpus", "organisms") if getattr(args, x)]
    if len(given) > 1:
        raise ConfigError("give one of --traces KEY, --corpus FILE or --organisms")
    if not given:
        return None
    if args.traces:
        c: dict[str, Any] = {"kind": "traceset", "key": args.traces, "split": args.split}
        if args.hesitation:
            c["hesitation"] = list(args.hesitation)
        return c
    if args.corpus and args.corpus.lstrip().startswith("{"):
        from ..validate import parse_json_object

        return parse_json_object(args.corpus, "--corpus")
    if args.corpus:
        p = Path(args.corpus).expanduser()
        if not p.is_file():
            raise ConfigError(f"--corpus {p} is not a file")
        return {"kind": "jsonl" if p.suffix == ".jsonl" else "text", "path": str(p)}
    return {"kind": "organism", "n": args.n}


def _cmd_collect(args) -> int:
    from ..adapters.cli import _run_job
    from ..validate import number, parse_json_object, parse_sets

    config = parse_json_object(args.config, "--config") if args.config else {}
    config.update(parse_sets(args.set))
    if args.hesitation:
        config["hesitation"] = list(args.hesitation)
    spec: dict[str, Any] = {
        "source": source_spec(args), "config": config, "ablation": args.ablation,
        "ablation_top": number(args.ablation_top, "--ablation-top", lo=1, integer=True),
        "map": False if args.map == "none" else args.map, "store": args.store,
        "device": args.device}
    corpus = corpus_spec(args)
    if corpus is not None:
        spec["corpus"] = corpus
    return _run_job("features.collect", spec, args.background)


def add_commands(sub) -> None:
    p = sub.add_parser("features", help="feature collections of adapters or transcoders")
    s = p.add_subparsers(dest="features_command", required=True)
    c = s.add_parser("collect", help="collect features over a trace set or a file (a job)")
    c.add_argument("--adapters", help="adapters artifact key (default: the newest)")
    c.add_argument("--source-store", default="main", choices=["main", "demo"],
                   help="where --adapters lives (default: your cache)")
    c.add_argument("--transcoders", help="a folder of per-layer SAELens transcoders (with "
                   "--model) or a transcoders artifact key")
    c.add_argument("--model", help="the model the --transcoders folder reads")
    c.add_argument("--traces", help="trace set key: its prompt + trace sequences")
    c.add_argument("--split", default="all", choices=["train", "eval", "all"])
    c.add_argument("--corpus", help="a text (one sequence a line) or JSONL file, or the "
                   'job\'s corpus JSON, e.g. {"kind": "organism", "n": 2000}')
    c.add_argument("--source", help='the job\'s source JSON, e.g. {"kind": "adapters", '
                                    '"store": "demo"}')
    c.add_argument("--config", help='JSON collection settings, e.g. {"batch_size": 64}')
    c.add_argument("--organisms", action="store_true",
                   help="the organisms' labelled traces (organism models only)")
    c.add_argument("--n", type=int, default=2000, help="--organisms: number of traces")
    c.add_argument("--hesitation", nargs="+", metavar="WORD",
                   help="hesitation word(s) (default: the trace set's, else wait); every "
                        "vocabulary entry spelling them counts")
    c.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a collection setting (batch_size, max_len, top_k, ...)")
    c.add_argument("--ablation", default="top", choices=["top", "all", "none"])
    c.add_argument("--ablation-top", type=int, default=64)
    c.add_argument("--store", default="main", choices=["main", "demo"],
                   help="where the artifact goes (default: your cache)")
    c.add_argument("--map", default="umap", choices=["umap", "pca", "none"],
                   help="the decoder-direction map (computed once per source)")
    c.add_argument("--device", default="auto")
    c.add_argument("--background", action="store_true", help="submit and return")
    c.set_defaults(func=_cmd_collect)
    pr = s.add_parser("probe", help="linear probes of the organisms' planted labels at every "
                      "layer of the reasoner (does the model represent what no feature "
                      "separates?)")
    pr.add_argument("--n", type=int, default=800, help="labelled organism traces")
    pr.add_argument("--store", default="main", choices=["main", "demo"],
                    help="where the artifact goes (default: your cache)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    """Fit and save the label probes (``interp.features.probe``) and print them."""
    import json
    import sys

    from tqdm import tqdm

    from ..adapters.report import demo_store
    from ..models import load_model
    from ..store import Store
    from ..validate import number
    from .corpus import organism_corpus
    from .probe import label_probes, save_probes

    n = number(args.n, "--n", lo=2, integer=True)
    model = load_model("organism:reasoner", device=args.device)
    corpus = organism_corpus(n, seed=0)
    bar = tqdm(total=n, file=sys.stderr, unit="seq")

    def progress(i, total):
        bar.n = i
        bar.refresh()

    res = label_probes(model.hooked, corpus, max_seqs=n, progress=progress)
    bar.close()
    store = demo_store(read_only=False) if args.store == "demo" else Store()
    art = save_probes(res, model, corpus, n, store)
    print(json.dumps({"key": art.key, **res}, indent=1))
    return 0
