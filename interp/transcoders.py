"""Per-layer transcoders of one model, trained on a trace set (for attribution graphs).

A transcoder of layer ``l`` reads the MLP's normalised input and predicts the MLP's
output::

    x = blocks.{l}.ln2.hook_normalized      (after the pre-MLP norm, before its gain)
    y = blocks.{l}.hook_mlp_out
    f = ReLU(x W_enc + b_enc),  ŷ = f W_dec + b_dec

trained on the model's own activations over the prompt + trace tokens of a trace set's
``train`` traces (:mod:`interp.tasks.traces`), one layer at a time, on any slice of
layers. Loss: ``‖ŷ − y‖² / ‖y − ȳ‖²`` (NMSE, mean over the batch's tokens) plus
``l1 · Σ_f f · ‖W_dec[f]‖`` per token; Adam; the encoder starts as in the adapters
(:class:`~interp.adapters.module.Adapter`), the decoder at zero, ``b_dec`` at ``ȳ``.

Held-out figures on the trace set's ``eval`` traces: NMSE and fraction of variance
explained per layer, L0 (active features per token), dead features, and the *spliced
KL*: KL(model ‖ model with the layer's MLP output replaced by the transcoder's) per
token, in nats. Saved as a ``transcoders`` artifact with one SAELens transcoder folder
per layer (``layer_<l>/cfg.json`` + ``sae_weights.safetensors``; hook names above), the
layout attribution reads (``interp.attribution.replacement.transcoder_replacement``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from .errors import ConfigError

KIND = "transcoders"
IN_HOOK = "blocks.{l}.ln2.hook_normalized"
OUT_HOOK = "blocks.{l}.hook_mlp_out"
Progress = Callable[..., None]


def parse_layers(text: str | Sequence[int], n_layers: int) -> list[int]:
    """``"0-3"``, ``"1,5,7"`` or a list -> sorted layer indices inside the model."""
    if isinstance(text, str):
        out: set[int] = set()
        try:
            for part in text.split(","):
                if "-" in part:
                    lo, hi = part.split("-")
                    out.update(range(int(lo), int(hi) + 1))
                elif part.strip():
                    out.add(int(part))
        except ValueError:
            raise ConfigError(f"layers must look like 0-3 or 1,5,7, not {text!r}") from None
    else:
        out = {int(x) for x in text}
    if not out or min(out) < 0 or max(out) >= n_layers:
        raise ConfigError(f"layers {sorted(out)} are outside 0..{n_layers - 1}")
    return sorted(out)


@torch.no_grad()
def mlp_io(model, seqs: Sequence[Sequence[int]], layers: Sequence[int], max_tokens: int,
           batch_size: int = 8, max_len: int = 512) -> dict[int, tuple[torch.Tensor, ...]]:
    """``{layer: (x [N, d], y [N, d])}`` float32 on CPU over the tokens of ``seqs`` (each
    cut to ``max_len``), at most ``max_tokens`` tokens in order."""
    from .generation import left_pad

    h = model.hooked
    dev = next(h.parameters()).device
    pad = model.tokenizer.pad_token_id or 0
    got: dict[int, list[list[torch.Tensor]]] = {ly: [[], []] for ly in layers}
    n = 0
    stop = max(layers) + 1
    for s in range(0, len(seqs), batch_size):
        chunk = [list(x)[:max_len] for x in seqs[s: s + batch_size]]
        toks, mask = left_pad(chunk, pad, dev)
        keep = mask.bool()
        cache: dict[str, torch.Tensor] = {}

        def grab(act, hook, cache=cache):
            cache[hook.name] = act.detach()
            return act

        names = [IN_HOOK.format(l=ly) for ly in layers] + [OUT_HOOK.format(l=ly) for ly in layers]
        h.run_with_hooks(toks, attention_mask=mask, stop_at_layer=stop,
                         fwd_hooks=[(nm, grab) for nm in names])
        for ly in layers:
            got[ly][0].append(cache[IN_HOOK.format(l=ly)][keep].float().cpu())
            got[ly][1].append(cache[OUT_HOOK.format(l=ly)][keep].float().cpu())
        n += int(keep.sum())
        if n >= max_tokens:
            break
    return {ly: (torch.cat(v[0])[:max_tokens], torch.cat(v[1])[:max_tokens])
            for ly, v in got.items()}


def transcoder_loss(tc, x: torch.Tensor, y: torch.Tensor, l1: float, var: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, parts)``: NMSE against the variance ``var`` plus the decoder-norm-weighted
    L1 of the activations (module docstring)."""
    yhat, f = tc(x)
    nmse = (yhat - y).pow(2).sum(-1).mean() / var
    sparsity = (f * tc.decoder_norms()).sum(-1).mean()
    return nmse + l1 * sparsity, {"nmse": nmse.detach(), "l1": sparsity.detach(),
                                  "l0": (f > 0).float().sum(-1).mean()}


def train_layer(x: torch.Tensor, y: torch.Tensor, d_sae: int, *, l1: float = 1e-3,
                steps: int = 500, lr: float = 1e-3, batch_tokens: int = 1024, seed: int = 0,
                device: torch.device | str = "cpu", progress: Progress | None = None):
    """One layer's transcoder (an :class:`~interp.adapters.module.Adapter`) and its curve."""
    from .adapters.module import Adapter

    g = torch.Generator().manual_seed(seed)
    tc = Adapter(x.shape[1], d_sae, y.shape[1], generator=g).to(device)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0).to(device))
    var = (y - y.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12).to(device)
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    curve = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(batch_tokens, len(x)),), generator=g)
        loss, parts = transcoder_loss(tc, x[idx].to(device), y[idx].to(device), l1, var)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 50) == 0 or step == steps - 1:
            curve.append({"step": step + 1, "loss": float(loss.detach()),
                          **{k: float(v) for k, v in parts.items()}})
        if progress is not None:
            progress(step + 1, steps)
    return tc.eval(), curve


@torch.no_grad()
def held_out(model, tcs: dict[int, Any], seqs: Sequence[Sequence[int]], max_tokens: int,
             max_len: int = 512) -> dict[str, Any]:
    """Per layer on held-out sequences: NMSE, variance explained, L0, dead fraction and
    the spliced KL (module docstring)."""
    from .generation import left_pad

    io = mlp_io(model, seqs, list(tcs), max_tokens, max_len=max_len)
    out: dict[str, Any] = {}
    for ly, tc in tcs.items():
        x, y = io[ly]
        dev = tc.W_enc.device
        yhat, f = tc(x.to(dev))
        err = (yhat.cpu() - y).pow(2).sum(-1).mean()
        var = (y - y.mean(0)).pow(2).sum(-1).mean()
        out[str(ly)] = {"nmse": float(err / var), "variance_explained": float(1 - err / var),
                        "l0": float((f > 0).float().sum(-1).mean()),
                        "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
                        "n_tokens": int(len(x))}
    h = model.hooked
    dev = next(h.parameters()).device
    pad = model.tokenizer.pad_token_id or 0
    chunk = [list(s)[:max_len] for s in seqs[:8]]
    toks, mask = left_pad(chunk, pad, dev)
    keep = mask.bool()
    lp = torch.log_softmax(h(toks, attention_mask=mask).float(), -1)
    for ly, tc in tcs.items():
        xs: dict[str, torch.Tensor] = {}

        def read(act, hook, xs=xs):
            xs["x"] = act
            return act

        def write(act, hook, _tc=tc, xs=xs):
            return _tc(xs["x"].to(_tc.W_enc.dtype))[0].to(act.dtype)

        lq = torch.log_softmax(h.run_with_hooks(
            toks, attention_mask=mask, fwd_hooks=[(IN_HOOK.format(l=ly), read),
                                                  (OUT_HOOK.format(l=ly), write)]).float(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)[keep]
        out[str(ly)]["spliced_kl"] = float(kl.mean())
    return out


def train_transcoders(model, traces: str, layers: str | Sequence[int], *, d_sae: int = 0,
                      l1: float = 1e-3, steps: int = 500, lr: float = 1e-3,
                      batch_tokens: int = 1024, max_tokens: int = 20000,
                      eval_tokens: int = 4000, max_len: int = 512, seed: int = 0,
                      store=None, progress: Progress | None = None) -> dict[str, Any]:
    """Train and save per-layer transcoders of ``model`` on trace set ``traces``
    (module docstring); returns the summary (key, per-layer figures, seconds)."""
    from .adapters.io import _saelens_transcoder, layer_dir
    from .store import Store, provenance
    from .tasks.traces import load_traceset

    ts = load_traceset(traces)
    made = ts.config.get("weight_hash")
    if made and made != model.weight_hash:
        raise ConfigError(f"trace set {ts.key} was made with {ts.model}, not with "
                          f"{model.spec}: transcoders learn the model's own activations")
    L = model.cfg.n_layers
    lay = parse_layers(layers, L)
    d_sae = d_sae or 4 * model.cfg.d_model
    train_seqs, eval_seqs = ts.sequences("train"), ts.sequences("eval")
    if not train_seqs or not eval_seqs:
        raise ConfigError(f"trace set {ts.key} needs train and eval traces (has "
                          f"{len(train_seqs)} and {len(eval_seqs)})")
    t0 = time.time()
    io = mlp_io(model, train_seqs, lay, max_tokens, max_len=max_len)
    t_collect = time.time() - t0
    tcs, curves = {}, {}
    for i, ly in enumerate(lay):
        def prog(step, total, _i=i):
            if progress:
                progress(_i * steps + step, len(lay) * steps)

        tcs[ly], curves[str(ly)] = train_layer(
            *io[ly], d_sae, l1=l1, steps=steps, lr=lr, batch_tokens=batch_tokens,
            seed=seed + ly, device=model.device, progress=prog)
    t_train = time.time() - t0 - t_collect
    figs = held_out(model, tcs, eval_seqs, eval_tokens, max_len)
    cfg = {"model": model.spec, "weight_hash": model.weight_hash, "traces": ts.key,
           "layers": lay, "d_sae": d_sae, "l1": l1, "steps": steps, "lr": lr,
           "batch_tokens": batch_tokens, "max_tokens": max_tokens, "max_len": max_len,
           "seed": seed, "hooks": {"in": IN_HOOK, "out": OUT_HOOK}}
    writers = {layer_dir(ly): (lambda p, _ly=ly: _saelens_transcoder(
        tcs, _ly, model.spec).save_model(p)) for ly in lay}
    store = store or Store()
    art = store.save(KIND, cfg, provenance=provenance(models={"model": model.describe()},
                                                      seed=seed),
                     meta={"held_out": figs, "curves": curves,
                           "seconds": {"collect": round(t_collect, 2),
                                       "train": round(t_train, 2)}},
                     writers=writers)
    return {"key": art.key, "layers": lay, "held_out": figs, **art.meta["seconds"]}


def _cmd_train(args) -> int:
    import json
    import sys

    from .models import load_model

    model = load_model(args.model, device=args.device)

    def progress(step, total):
        if step % max(1, total // 20) == 0 or step == total:
            print(f"[transcoders] {step}/{total}", file=sys.stderr, flush=True)

    res = train_transcoders(model, args.traces, args.layers, d_sae=args.d_sae, l1=args.l1,
                            steps=args.steps, lr=args.lr, batch_tokens=args.batch_tokens,
                            max_tokens=args.max_tokens, seed=args.seed, progress=progress)
    print(json.dumps(res))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("transcoders", help="per-layer transcoders of one model (for "
                                           "attribution), trained on a trace set")
    ts = p.add_subparsers(dest="transcoders_command", required=True)
    t = ts.add_parser("train", help="train transcoders on a slice of layers")
    t.add_argument("--model", required=True)
    t.add_argument("--traces", required=True, help="trace set key of this model's traces")
    t.add_argument("--layers", required=True, help="e.g. 0-3 or 2,5")
    t.add_argument("--d-sae", type=int, default=0, help="features per layer (0: 4·d_model)")
    t.add_argument("--l1", type=float, default=1e-3)
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-tokens", type=int, default=1024)
    t.add_argument("--max-tokens", type=int, default=20000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.set_defaults(func=_cmd_train)
