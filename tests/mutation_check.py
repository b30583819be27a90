"""Mutation check of the core math: plant one bug at a time, run the tests that should
catch it, count how many do.

    .venv/bin/python -m tests.mutation_check            # all mutants, JSON on the last line
    .venv/bin/python -m tests.mutation_check --list     # what each mutant changes
    .venv/bin/python -m tests.mutation_check --only 3,7 # some of them

Each mutant replaces one exact piece of one line of ``interp/`` (a flipped sign, two
swapped arguments, a position moved by one, a fit that sees the evaluation data, ...).
The project is copied once into a temporary folder; every mutant is applied to that copy
(the working tree is never touched), its tests run there with ``pytest -x``, and the
file is restored. A mutant is *caught* when its tests fail. The unmutated copy must pass
the same tests first. Not part of the default test run (it takes 15-30 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T = "tests/"
DT = "tests/test_distributed.py::test_"    # one test of the file (the fast, in-process ones)
SPLIT_TRACES = DT + "trace_generation_shares_merge_to_the_single_process_trace_set"
SPLIT_FEATURES = DT + "feature_collection_shares_merge_to_one_pass"
SPLIT_EFFECTS = DT + "batch_attribution_shares_merge_to_the_single_process_effects"
RANK_ESTIMATE = DT + "pair_estimate_per_rank_and_sharded"

# (file, exact text, replacement, tests, what the bug is)
MUTANTS: list[tuple[str, str, str, list[str], str]] = [
    ("interp/steering.py", "            return act + delta", "            return act - delta",
     [T + "test_planted.py"], "add_vector subtracts α·v"),
    ("interp/steering.py", "            return act - comp", "            return act - 0.5 * comp",
     [T + "test_planted.py"], "project_out removes half the component"),
    ("interp/steering.py", "        a = a[state.rows.to(a.device)]",
     "        a = a[state.rows.flip(0).to(a.device)]",
     [T + "test_planted.py"], "per-row α read for the wrong rows"),
    ("interp/length/steer.py",
     "    return [add_vector(hook_name(site, int(ly)), dirs[int(ly)], alpha, state=state)",
     "    return [add_vector(hook_name(site, int(ly)), dirs[int(ly)], -alpha, state=state)",
     [T + "test_planted.py"], "length steering sign flipped"),
    ("interp/length/directions.py", "        out.dirs[site] = ml - ms",
     "        out.dirs[site] = ms - ml", [T + "test_length.py"],
     "length direction short - long"),
    ("interp/length/directions.py",
     "        d_tr = x[trl].mean(0) - x[trs].mean(0)            # [L, d]",
     "        d_tr = ml - ms            # [L, d]",
     [T + "test_planted.py"], "separability direction fitted on the evaluation data too"),
    ("interp/length/stats.py",
     "    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))",
     "    return float((r[y == 1].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))",
     [T + "test_length.py"], "AUROC rank offset"),
    ("interp/length/heads.py",
     "        wu = W_O @ unit_short[layer].to(W_O.device).float()          # [H, d_head]",
     "        wu = -(W_O @ unit_short[layer].to(W_O.device).float())       # [H, d_head]",
     [T + "test_length.py"], "head score sign flipped"),
    ("interp/length/edit.py", "    return (Wf - torch.outer(Wf @ vf, vf)).to(W.dtype)",
     "    return (Wf - 0.5 * torch.outer(Wf @ vf, vf)).to(W.dtype)",
     [T + "test_length.py"], "ThinkEdit projection removes half the write"),
    ("interp/length/data.py",
     "    first = p + span.start - 1          # predicts the first thinking token / the close",
     "    first = p + span.start              # predicts the first thinking token / the close",
     [T + "test_length.py"], "thinking positions start one token late"),
    ("interp/steering.py", "        return opened & ~closed", "        return opened",
     [T + "test_length.py", T + "test_planted.py"], "SEAL steers after the think block closed"),
    ("interp/vectors/control.py", "        rc = pos.mean(0) - neg.mean(0)",
     "        rc = neg.mean(0) - pos.mean(0)", [T + "test_planted.py", T + "test_vectors.py"],
     "R-C sign flipped"),
    ("interp/vectors/control.py", "    c, info = control_vector(pos, neg, kind, center)",
     "    c, info = control_vector(neg, pos, kind, center) if neg is not None else "
     "control_vector(pos, neg, kind, center)",
     [T + "test_planted.py"], "control vector's positive and negative sets swapped"),
    ("interp/vectors/control.py", "            out.append((a * m).sum(1) / m.sum(1))",
     "            out.append(a.mean(1))", [T + "test_planted.py"],
     "mean token rule averages padding too"),
    ("interp/vectors/control.py", "            if float(u @ rc) < 0:",
     "            if float(u @ rc) > 0:", [T + "test_vectors.py", T + "test_planted.py"],
     "PCA-C sign opposite to R-C"),
    ("interp/vectors/sweep.py", "        last = off + pl - 1", "        last = off + pl",
     [T + "test_planted.py"], "sweep KL one position late"),
    ("interp/vectors/sweep.py", "        span = slice(last, off + n - 1)",
     "        span = slice(last + 1, off + n - 1)", [T + "test_planted.py"],
     "trace average skips the last prompt token"),
    ("interp/vectors/sweep.py", "                                        .sum().exp())",
     "                                        .mean().exp())", [T + "test_planted.py"],
     "p_correct a geometric mean instead of the product"),
    ("interp/vectors/lens.py", "    return 1.0 if unit == \"nats\" else 1.0 / math.log(2.0)",
     "    return 1.0 if unit == \"nats\" else 1.0 / math.log(10.0)", [T + "test_planted.py"],
     "bits use the wrong logarithm"),
    ("interp/vectors/lens.py", "    return (lp.exp() * (lp - lq)).sum(-1) * _scale(unit)",
     "    return (lq.exp() * (lq - lp)).sum(-1) * _scale(unit)",
     [T + "test_vectors.py", T + "test_planted.py"], "KL(Q||P) instead of KL(P||Q)"),
    ("interp/vectors/lens.py", "        v = h.ln_final(v[None, None])[0, 0]",
     "        v = v / v.norm()", [T + "test_planted.py"], "final-norm lens without the gain"),
    ("interp/vectors/task.py",
     "    return (theta.to(acc) + float(alpha) * v.to(theta.device, acc)).to(theta.dtype)",
     "    return (theta.to(acc) - float(alpha) * v.to(theta.device, acc)).to(theta.dtype)",
     [T + "test_vectors.py"], "task vector applied with -α"),
    ("interp/vectors/task.py", "                yield name, inc, a.to(acc) - b.to(acc)",
     "                yield name, inc, b.to(acc) - a.to(acc)", [T + "test_vectors.py"],
     "task vector B - A"),
    ("interp/weights.py", "\"relative\": math.sqrt(dd) / na if na > 0",
     "\"relative\": math.sqrt(dd) / nb if na > 0",
     [T + "test_weights.py"], "relative change over the fine-tune's norm"),
    ("interp/generation.py",
     "    probs = torch.softmax(logits.float() / temperature, dim=-1)",
     "    probs = torch.softmax(logits.float(), dim=-1)", [T + "test_generation.py"],
     "temperature ignored"),
    ("interp/generation.py", "        keep = sp.cumsum(-1) - sp < top_p",
     "        keep = sp.cumsum(-1) < top_p",
     [T + "test_generation.py"], "nucleus drops the token that crosses top_p"),
    ("interp/generation.py", "            self._rk = rows(self._rk, self._n_rot)",
     "            self._rk = rows(self._rk, self._n_rot - 1)", [T + "test_generation.py"],
     "compaction drops a rotated key"),
    ("interp/generation.py", "next_pos[keep], state.rows[keep], done[keep]",
     "next_pos[keep], state.rows[:int(keep.sum())], done[keep]",
     [T + "test_generation.py"], "compaction keeps the wrong row ids"),
    ("interp/adapters/loss.py",
     "    loss = w.lambda_adapt * kl + w.l1 * l1 + w.lambda_nmse * nmse",
     "    loss = w.lambda_adapt * kl + w.l1 * l1 + w.l1 * nmse", [T + "test_planted.py"],
     "NMSE weighted by l1"),
    ("interp/adapters/loss.py", "            bridge = 0.5 * kl", "            bridge = kl",
     [T + "test_planted.py", T + "test_adapters.py"], "bridge endpoints not halved"),
    ("interp/adapters/loss.py", "    return (logp_ref.exp() * (logp_ref - logp)).sum(-1)",
     "    return (logp.exp() * (logp - logp_ref)).sum(-1)",
     [T + "test_adapters.py", T + "test_planted.py"], "adapter KL reversed"),
    ("interp/adapters/loss.py", "        den = (hr.float().pow(2) * v).sum().clamp_min(1e-12)",
     "        den = (ha.float().pow(2) * v).sum().clamp_min(1e-12)",
     [T + "test_adapters.py", T + "test_planted.py"], "NMSE normalised by the adapter side"),
    ("interp/adapters/loss.py",
     "        total = total + masked_mean((f * norms).sum(-1).float(), valid, denom)",
     "        total = total + masked_mean(f.sum(-1).float(), valid, denom)",
     [T + "test_adapters.py"], "L1 without decoder norms"),
    # scale-out (torchrun, 2 ranks)
    ("interp/adapters/loss.py",
     "        dens = reduce(torch.stack(", "        dens = (torch.stack(",
     [T + "test_distributed.py"], "NMSE denominators not summed over the ranks"),
    ("interp/adapters/loss.py", "            n_br = global_count(vr, reduce)",
     "            n_br = global_count(valid, reduce)", [T + "test_distributed.py"],
     "bridged term divided by all tokens of the ranks"),
    ("interp/adapters/parallel.py", "        r = rows[(rows >= lo) & (rows < hi)] - lo",
     "        r = (rows[(rows >= lo) & (rows < hi)] - lo + 1) % (hi - lo)",
     [T + "test_distributed.py"], "a rank's bridged rows re-indexed off by one"),
    ("interp/adapters/parallel.py", "            D.all_reduce_grads(self.params)",
     "            D.all_reduce_grads([])", [T + "test_distributed.py"],
     "data-parallel gradients not summed over the ranks"),
    ("interp/adapters/parallel.py", "            (loss * self.ranks.world).backward()",
     "            loss.backward()", [T + "test_distributed.py"],
     "FSDP gradients averaged instead of summed"),
    ("interp/adapters/parallel.py", "        set_optimizer_state_dict(ad, opt, osd, options=opts)",
     "        None", [T + "test_distributed.py"], "a resume on several ranks drops AdamW's state"),
    ("interp/distributed.py", "    hi_b = lo_b + q + (1 if rank < r else 0)",
     "    hi_b = lo_b + q + (1 if rank <= r else 0)", [T + "test_distributed.py"],
     "shard blocks overlap"),
    ("interp/distributed.py",
     "        meta[\"records\"] = [r for p in parts for r in p.meta.get(\"records\", [])]",
     "        meta[\"records\"] = [r for p in parts[::-1] for r in p.meta.get(\"records\", [])]",
     [T + "test_distributed.py"], "merged records in reverse rank order"),
    ("interp/generation.py",
     "        gen = torch.Generator(device=device).manual_seed(seed * 100003 + first_row + start)",
     "        gen = torch.Generator(device=device).manual_seed(seed * 100003 + start)",
     [T + "test_distributed.py"], "a generation shard restarts the chunk seeds"),
    ("interp/adapters/evaluate.py", "        sums = faithfulness_sums(model, batches[f_lo:f_hi])",
     "        sums = faithfulness_sums(model, batches[f_lo:f_hi + 1])",
     [T + "test_distributed.py"], "a rank evaluates one batch too many"),
    ("interp/tasks/traces.py", "progress=progress, lo=lo, hi=hi)",
     "progress=progress, lo=lo, hi=hi + 1)", [SPLIT_TRACES],
     "a rank's trace share ends one prompt late"),
    ("interp/tasks/traces.py", "top_p=top_p, seed=seed + start,",
     "top_p=top_p, seed=seed + start - lo,", [SPLIT_TRACES],
     "a trace-generation share restarts the chunk seeds"),
    ("interp/features/collect.py", "first_batch=lo // cfg.batch_size)",
     "first_batch=0)", [SPLIT_FEATURES],
     "a collection share's reservoir seeds restart at batch 0"),
    ("interp/features/pipeline.py", "    for st, ids in states:",
     "    for st, ids in states[::-1]:", [SPLIT_FEATURES],
     "collector states merged in reverse rank order"),
    ("interp/features/collect.py",
     "                self.lab_map[name] += [torch.where(m >= 0, m + base, m)",
     "                self.lab_map[name] += [torch.where(m >= 0, m, m)",
     [SPLIT_FEATURES], "a later share's labelled rows not renumbered"),
    ("interp/features/collect.py",
     "        self.u_idx += [idx + torch.tensor([self.u_n, 0]) for idx in other.u_idx]",
     "        self.u_idx += [idx + torch.tensor([0, 0]) for idx in other.u_idx]",
     [SPLIT_FEATURES], "a later share's labelled positions not renumbered"),
    ("interp/features/collect.py",
     "                self.lab_idx[name] += [idx + torch.tensor([base, 0])",
     "                self.lab_idx[name] += [idx + torch.tensor([0, 0])",
     [SPLIT_FEATURES], "a later share's sequence-label rows not renumbered"),
    ("interp/attribution/batch.py", '"trace": lo + i}', '"trace": i}',
     [SPLIT_EFFECTS], "a share's trigger trace indices not offset"),
    ("interp/distributed.py",
     "    tensors = {n: torch.cat([p.tensors[n] for p in parts], dim=0) for n in names}",
     "    tensors = {n: torch.cat([p.tensors[n] for p in parts[::-1]], dim=0) for n in names}",
     [SPLIT_EFFECTS], "merged tensors in reverse rank order"),
    ("interp/estimate.py", "    L, d, T, B = s.n_layers, s.d_model, seq_len, -(-batch // ranks)",
     "    L, d, T, B = s.n_layers, s.d_model, seq_len, batch", [RANK_ESTIMATE],
     "per-rank estimate holds the whole batch's activations"),
    ("interp/estimate.py", "    optim = adapter_params * 4 * 4 / (ranks if fsdp else 1)",
     "    optim = adapter_params * 4 * 4", [RANK_ESTIMATE],
     "FSDP estimate does not shard the adapters and AdamW"),
]


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(cwd), "INTERP_CACHE": str(cwd / "cache")}
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, "timeout"
    return p.returncode, (p.stdout + p.stderr)[-3000:]


def _pytest(tests: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
            "-m", "not slow and not browser", *tests]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutation_check")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", default="", help="comma-separated mutant numbers")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant")
    args = ap.parse_args(argv)
    chosen = [int(i) for i in args.only.split(",") if i.strip()] or list(range(len(MUTANTS)))
    if args.list:
        for i, (f, _, _, tests, what) in enumerate(MUTANTS):
            print(f"{i:2d}  {f}: {what}  [{', '.join(tests)}]")
        return 0
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp) / "tree"
        shutil.copytree(ROOT, work, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "jobs", "out"))
        for i in chosen:                       # every mutant must apply to exactly one place
            f, old, _, _, what = MUTANTS[i]
            n = (work / f).read_text().count(old)
            if n != 1:
                print(f"mutant {i} ({what}) matches {n} places in {f}", file=sys.stderr)
                return 2
        tests = sorted({t for i in chosen for t in MUTANTS[i][3]})
        print(f"unmutated run of {', '.join(tests)} ...", file=sys.stderr, flush=True)
        rc, out = _run(_pytest(tests), work, args.timeout * 2)
        if rc != 0:
            print(f"the unmutated tests fail; fix them first:\n{out}", file=sys.stderr)
            return 2
        results = []
        for i in chosen:
            f, old, new, tests, what = MUTANTS[i]
            path = work / f
            original = path.read_text()
            path.write_text(original.replace(old, new))
            t1 = time.time()
            try:
                rc, out = _run(_pytest(tests), work, args.timeout)
            finally:
                path.write_text(original)
            caught = rc != 0
            results.append({"id": i, "file": f, "mutant": what, "caught": caught,
                            "seconds": round(time.time() - t1, 1)})
            print(f"[{i:2d}] {'caught  ' if caught else 'SURVIVED'} {what} "
                  f"({time.time() - t1:.0f} s)", file=sys.stderr, flush=True)
    caught = sum(r["caught"] for r in results)
    print(json.dumps({"caught": caught, "total": len(results),
                      "rate": round(caught / max(1, len(results)), 3),
                      "survived": [r["mutant"] for r in results if not r["caught"]],
                      "seconds": round(time.time() - t0, 1), "mutants": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
