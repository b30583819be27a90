"""Run circuit-tracer's ``attribute`` on a benchmark setup folder (baseline side).

Runs in circuit-tracer's own virtual environment, never in the project's::

    .venv-ct/bin/python interp/attribution/ct_runner.py SETUP_FOLDER OUT_FILE \\
        [--batch-size 256] [--max-feature-nodes N] [--target-ids 5,17] [--check]

It imports only what that environment has (torch, safetensors, transformer_lens,
transformers, tokenizers, circuit_tracer), nothing from ``interp``.

SETUP_FOLDER is what ``interp.attribution.benchmodel.save_bench_setup`` wrote. The
HookedTransformer is rebuilt from the saved config kwargs, wrapped by circuit-tracer's
``ReplacementModel.from_config`` (transformerlens backend) with a ``TranscoderSet`` of
ReLU ``SingleLayerTranscoder`` s reading ``mlp.hook_in`` and writing ``mlp.hook_out``,
then the saved parameters are copied in. ``attribute`` runs once (no warm-up); its wall
time is ``attribute_seconds``. The graph is not pruned.

OUT_FILE (safetensors), circuit-tracer's ``Graph`` fields as they come:

    adjacency_matrix     [N, N] float32; rows = targets, columns = sources; node order
                         [selected features | errors (layer-major, n_layers * n_pos) |
                          tokens (n_pos) | logits (n_logits)]
    active_features      [n_active, 3] int64: (layer, pos, feature_idx), sorted
                         lexicographically; position 0 (BOS) never appears
    activation_values    [n_active] float32, aligned with active_features
    selected_features    [n_selected] int64: indices into active_features of the feature
                         nodes, ascending (all of them unless --max-feature-nodes cuts)
    input_tokens         [n_pos] int64
    logit_token_ids      [n_logits] int64, in node order
    logit_probabilities  [n_logits] float32 (softmax at the last position)
    logits_last          [d_vocab] float32: the model's own logits at the last position

OUT_FILE with the suffix ``.json`` (the sidecar): ``attribute_seconds`` (wall),
``attribute_cpu_seconds`` (user + system CPU of this process during the call),
``load_average_1min`` (at the end of the call), ``peak_rss_bytes`` (``ru_maxrss`` of
this process after ``attribute``: the whole process, imports and model included),
``rss_before_attribute_bytes``, ``cuda_peak_bytes`` (CUDA only), versions, settings,
node counts and, with ``--check``, the completeness figures (row sums of the adjacency
against a frozen linear forward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SETUP_FORMAT = "interp-attribution-bench-v1"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tokenizer(vocab: int, bos_id: int):
    """A word-level tokenizer over ``t0 .. t{vocab-1}`` with ``<bos>`` at ``bos_id``:
    circuit-tracer decodes ids and reads ``all_special_ids`` / ``vocab_size``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {("<bos>" if i == bos_id else f"t{i}"): i for i in range(vocab)}
    tk = Tokenizer(models.WordLevel(words, unk_token="<bos>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>")


def build_replacement_model(setup: Path, device: str):
    """circuit-tracer's TransformerLens replacement model of the setup, and the meta."""
    from circuit_tracer.replacement_model import ReplacementModel
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from transformer_lens import HookedTransformerConfig

    meta = json.loads((setup / "setup.json").read_text())
    if meta.get("format") != SETUP_FORMAT:
        raise SystemExit(f"error: {setup} is not a benchmark setup ({meta.get('format')!r})")
    kw = dict(meta["hooked_transformer_config"])
    kw["dtype"] = getattr(torch, kw["dtype"])
    kw["device"] = device
    cfg = HookedTransformerConfig(**kw)

    tmeta = meta["transcoders"]
    if tmeta["activation"] != "relu":
        raise SystemExit(f"error: unsupported transcoder activation {tmeta['activation']!r}")
    saved_tc = load_file(str(setup / "transcoders.safetensors"))
    layers = {}
    for layer in range(tmeta["n_layers"]):
        w_enc = saved_tc[f"{layer}.W_enc"]
        tc = SingleLayerTranscoder(w_enc.shape[1], w_enc.shape[0], torch.relu, layer,
                                   device=torch.device(device), dtype=torch.float32)
        tc.load_state_dict({n: saved_tc[f"{layer}.{n}"]
                            for n in ("W_enc", "b_enc", "W_dec", "b_dec")})
        layers[layer] = tc
    tset = TranscoderSet(layers, feature_input_hook=tmeta["feature_input_hook"],
                         feature_output_hook=tmeta["feature_output_hook"], scan="interp-bench")

    model = ReplacementModel.from_config(cfg, tset, backend="transformerlens")
    # from_config keeps TransformerLens's random init; copy the saved parameters in. The
    # replacement model wraps each MLP and the unembed, which renames their parameters.
    saved = load_file(str(setup / "model.safetensors"))
    own = {n: p for n, p in model.named_parameters() if not n.startswith("transcoders.")}

    def wrapped(name: str) -> str:
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "mlp":
            return f"blocks.{parts[1]}.mlp.old_mlp.{parts[3]}"
        if parts[0] == "unembed":
            return "unembed.old_unembed." + ".".join(parts[1:])
        return name

    mapped = {wrapped(n): t for n, t in saved.items()}
    if set(mapped) != set(own):
        raise SystemExit(f"error: saved parameters do not match the model: missing "
                         f"{sorted(set(own) - set(mapped))[:5]}, unexpected "
                         f"{sorted(set(mapped) - set(own))[:5]}")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(mapped[n].to(p.device, p.dtype))
    # circuit-tracer needs a tokenizer (decode, special ids, vocab size). Assigned
    # directly: HookedTransformer.set_tokenizer would reload it by name from a hub.
    model.tokenizer = _tokenizer(cfg.d_vocab, meta["prompt"]["bos_id"])
    return model, meta


def completeness(model, graph, input_ids: torch.Tensor) -> dict:
    """Row sums of the adjacency against a frozen linear forward.

    In the frozen model (attention patterns and norm scales at their clean values, MLP
    outputs at their clean values) every target is linear in the token embeddings and
    the MLP outputs; circuit-tracer's nodes cover the MLP outputs at positions >= 1
    (features + error; ``b_dec`` is in neither) and the embeddings. So with the MLP
    outputs at position 0 set to zero (and b_dec = 0, no biases):

    * logit row k sums to ``(W_U[:, k] - mean_j W_U[:, j]) . ln_final(resid)[-1]``
      = ``logit_k - mean(logits)`` minus the bias terms of that frozen run;
    * feature row (l, p, f) sums to ``W_enc[f] . mlp_in[l, p]`` of that frozen run.

    Reported as max absolute differences, with the same figures against the clean run
    (position-0 MLP outputs kept) to show what dropping them costs."""
    n_layers = model.cfg.n_layers
    names_frozen = [n for n in model.hook_dict
                    if n.endswith("attn.hook_pattern") or n.endswith("hook_scale")]
    out_names = [f"blocks.{layer}.mlp.hook_out" for layer in range(n_layers)]
    in_names = [f"blocks.{layer}.mlp.hook_in" for layer in range(n_layers)]
    cache: dict[str, torch.Tensor] = {}

    def keep(acts, hook):
        cache[hook.name] = acts.detach().clone()

    with torch.no_grad():
        clean_logits = model.run_with_hooks(
            input_ids[None], fwd_hooks=[(n, keep) for n in names_frozen + out_names + in_names])
        clean_in = {n: cache[n] for n in in_names}
        frozen_in: dict[str, torch.Tensor] = {}

        def freeze(acts, hook):
            return cache[hook.name]

        def zero_pos0(acts, hook):
            out = cache[hook.name].clone()
            out[:, 0] = 0
            return out

        def keep_in(acts, hook):
            frozen_in[hook.name] = acts.detach().clone()

        hooks = ([(n, freeze) for n in names_frozen] + [(n, zero_pos0) for n in out_names]
                 + [(n, keep_in) for n in in_names])
        frozen_logits = model.run_with_hooks(input_ids[None], fwd_hooks=hooks)

    adj = graph.adjacency_matrix
    n_logits = len(graph.logit_targets)
    ids = graph.logit_token_ids
    res: dict = {}
    b_u = model.unembed.b_U.detach()
    for tag, lg in (("frozen_pos0_zeroed", frozen_logits), ("clean", clean_logits)):
        last = lg[0, -1] - b_u  # edges carry no bias
        expect = last[ids] - last.mean()
        got = adj[-n_logits:].sum(1)
        res[f"logit_rows_max_abs_diff_{tag}"] = float((got - expect).abs().max())
    res["logit_rows_scale"] = float((adj[-n_logits:].sum(1)).abs().max())

    sel = graph.active_features[graph.selected_features]
    n_sel = len(sel)
    got = adj[:n_sel].sum(1)
    for tag, mlp_in in (("frozen_pos0_zeroed", frozen_in), ("clean", clean_in)):
        expect = torch.empty(n_sel)
        for layer in range(n_layers):
            m = sel[:, 0] == layer
            if not m.any():
                continue
            w_enc = model.transcoders[layer].W_enc.detach()
            x = mlp_in[in_names[layer]][0, sel[m, 1]]
            expect[m] = (x * w_enc[sel[m, 2]]).sum(-1).float().cpu()
        res[f"feature_rows_max_abs_diff_{tag}"] = float((got - expect).abs().max())
    res["feature_rows_scale"] = float(got.abs().max())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setup", type=Path, help="folder written by save_bench_setup")
    ap.add_argument("out", type=Path, help="output .safetensors file (+ .json sidecar)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--max-n-logits", type=int, default=10)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument("--target-ids", default=None,
                    help="comma-separated token ids to attribute (default: salient logits)")
    ap.add_argument("--n-tokens", type=int, default=None,
                    help="use only the first N prompt tokens (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check", action="store_true",
                    help="also compute completeness figures (after the timed call)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    import circuit_tracer
    from circuit_tracer import attribute

    model, meta = build_replacement_model(args.setup, args.device)
    ids = torch.tensor(meta["prompt"]["input_ids"], dtype=torch.long)
    if args.n_tokens is not None:
        ids = ids[: args.n_tokens]
    ids = ids.to(args.device)
    targets = None
    if args.target_ids:
        targets = torch.tensor([int(t) for t in args.target_ids.split(",")], dtype=torch.long)

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    graph = attribute(ids, model, attribution_targets=targets, max_n_logits=args.max_n_logits,
                      desired_logit_prob=args.desired_logit_prob, batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes, verbose=False)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    cuda_peak = torch.cuda.max_memory_allocated() if cuda else None

    with torch.no_grad():
        logits_last = model(ids[None])[0, -1].float().cpu()
    n_pos = len(ids)
    n_layers = model.cfg.n_layers
    info = {
        "attribute_seconds": seconds,
        "attribute_cpu_seconds": cpu_seconds,
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_bytes": peak_rss,
        "rss_before_attribute_bytes": rss_before,
        "cuda_peak_bytes": cuda_peak,
        "peak_rss_note": "ru_maxrss of the runner process after attribute (whole process)",
        "versions": {"circuit_tracer": circuit_tracer.__version__,
                     "transformer_lens": version("transformer-lens"),
                     "transformers": version("transformers"), "torch": torch.__version__,
                     "python": platform.python_version()},
        "settings": {"batch_size": args.batch_size, "max_feature_nodes": args.max_feature_nodes,
                     "max_n_logits": args.max_n_logits,
                     "desired_logit_prob": args.desired_logit_prob,
                     "target_ids": None if targets is None else targets.tolist(),
                     "n_tokens": n_pos, "threads": torch.get_num_threads(),
                     "device": args.device, "setup": str(args.setup),
                     "setup_meta": {k: v for k, v in meta.items() if k != "prompt"},
                     "prompt_seed": meta["prompt"]["seed"]},
        "counts": {"n_active": int(graph.active_features.shape[0]),
                   "n_selected": int(graph.selected_features.shape[0]),
                   "n_error": n_layers * n_pos, "n_token": n_pos,
                   "n_logits": len(graph.logit_targets),
                   "n_nodes": int(graph.adjacency_matrix.shape[0])},
    }
    if args.check:
        info["completeness"] = completeness(model, graph, ids)

    tensors = {
        "adjacency_matrix": graph.adjacency_matrix.float(),
        "active_features": graph.active_features.long(),
        "activation_values": graph.activation_values.float(),
        "selected_features": graph.selected_features.long(),
        "input_tokens": graph.input_tokens.long(),
        "logit_token_ids": graph.logit_token_ids.long(),
        "logit_probabilities": graph.logit_probabilities.float(),
        "logits_last": logits_last,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, args.out)
    side = args.out.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, side)
    print(json.dumps({k: info[k] for k in ("attribute_seconds", "attribute_cpu_seconds",
                                            "peak_rss_bytes", "counts")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
