"""circuit-tracer as a baseline: run it in its own virtual environment, read its graph.

circuit-tracer 0.5.0 pins transformer-lens 3.2.1 and transformers 4.57.3, which cannot
share the project's venv, so it lives in ``.venv-ct`` (ignored by git)::

    python3.11 -m venv .venv-ct
    .venv-ct/bin/pip install torch==2.13.0
    .venv-ct/bin/pip install circuit-tracer==0.5.0

:func:`run_circuit_tracer` runs ``ct_runner.py`` with that python (``$INTERP_CT_PYTHON``
or ``<project>/.venv-ct/bin/python``) on a folder from
:func:`interp.attribution.benchmodel.save_bench_setup`; :func:`load_ct_graph` reads
the result; :func:`ct_edges_as_dense` cuts circuit-tracer's adjacency into blocks keyed
by (layer, pos, feature) so two engines compare edge by edge.

circuit-tracer's node order (``Graph`` docstring): ``[selected features | errors |
tokens | logits]``; features in the order of ``active_features[selected_features]``
(lexicographic in (layer, pos, feature)); errors layer-major (``layer * n_pos + pos``);
adjacency rows are targets, columns sources. Edge into a feature = the linear part of
its pre-activation (``W_enc[t] . d mlp_in``; no ``b_enc``, no ReLU); edge into a logit
= the de-meaned unembedding column (``W_U[:, k] - mean_j W_U[:, j]``) at the last
position; a source feature's write is ``a_s * W_dec[s]``. Position 0 (BOS) has no
features and a zero error vector.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file

from ..errors import ArtifactError, BaselineError, ConfigError
from ..store import PROJECT_ROOT

CT_PYTHON_ENV = "INTERP_CT_PYTHON"
RUNNER = Path(__file__).resolve().with_name("ct_runner.py")
INSTALL_COMMANDS = ("python3.11 -m venv .venv-ct && .venv-ct/bin/pip install torch==2.13.0 "
                    "&& .venv-ct/bin/pip install circuit-tracer==0.5.0")
TENSOR_KEYS = ("adjacency_matrix", "active_features", "activation_values",
               "selected_features", "input_tokens", "logit_token_ids",
               "logit_probabilities", "logits_last")


def ct_python() -> Path:
    """The circuit-tracer venv's python: ``$INTERP_CT_PYTHON``, else ``.venv-ct``."""
    env = os.environ.get(CT_PYTHON_ENV)
    path = Path(env) if env else PROJECT_ROOT / ".venv-ct" / "bin" / "python"
    if not path.is_file():
        where = f"${CT_PYTHON_ENV}={env}" if env else str(path)
        raise ConfigError(f"circuit-tracer's python not found ({where}). Install the baseline "
                          f"in its own venv from the project root: {INSTALL_COMMANDS} "
                          f"(or point ${CT_PYTHON_ENV} at a python that has circuit-tracer "
                          f"0.5.0)")
    return path



def run_flags(n_tokens: int | None, max_feature_nodes: int | None,
              target_ids: Sequence[int] | None, threads: int | None) -> list[str]:
    """The command-line flags both timed attribution workers (ours and circuit-tracer's
    runner) take for these settings (unset ones are left out)."""
    out: list[str] = []
    if n_tokens is not None:
        out += ["--n-tokens", str(int(n_tokens))]
    if max_feature_nodes is not None:
        out += ["--max-feature-nodes", str(int(max_feature_nodes))]
    if target_ids:
        out += ["--target-ids", ",".join(str(int(t)) for t in target_ids)]
    if threads:
        out += ["--threads", str(int(threads))]
    return out

def run_circuit_tracer(setup_folder: str | os.PathLike, n_tokens: int | None = None,
                       out_file: str | os.PathLike | None = None, batch_size: int = 256,
                       max_feature_nodes: int | None = None,
                       target_ids: Sequence[int] | None = None, threads: int | None = None,
                       check: bool = False, device: str = "cpu",
                       timeout: float | None = None) -> dict[str, Any]:
    """Run circuit-tracer's ``attribute`` once on the setup's first ``n_tokens`` tokens
    (all when None) in a subprocess; return its sidecar (``attribute_seconds``,
    ``peak_rss_bytes``, ``versions``, ``settings``, ``counts``, ``completeness`` with
    ``check``) plus ``out_file``, the graph's safetensors path (a temporary folder's
    when ``out_file`` is None; the caller removes it)."""
    python = ct_python()
    setup_folder = Path(setup_folder)
    if not (setup_folder / "setup.json").is_file():
        raise ArtifactError(f"{setup_folder} has no setup.json (see save_bench_setup)")
    if batch_size < 1 or (max_feature_nodes is not None and max_feature_nodes < 1):
        raise ConfigError("batch_size and max_feature_nodes must be >= 1")
    if out_file is None:
        out_file = Path(tempfile.mkdtemp(prefix="ct-graph-")) / "graph.safetensors"
    out_file = Path(out_file)
    # -I: isolated (no PYTHONPATH, no script folder on sys.path): nothing of this project
    cmd = [str(python), "-I", str(RUNNER), str(setup_folder), str(out_file),
           "--batch-size", str(batch_size), "--device", device]
    cmd += run_flags(n_tokens, max_feature_nodes, target_ids, threads)
    if check:
        cmd.append("--check")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=str(PROJECT_ROOT))
    except subprocess.TimeoutExpired as e:
        raise BaselineError(f"circuit-tracer ran past {timeout} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BaselineError(f"circuit-tracer's runner failed (exit {proc.returncode}):\n{tail}")
    info = json.loads(out_file.with_suffix(".json").read_text())
    info["out_file"] = str(out_file)
    return info


@dataclass
class CTGraph:
    """circuit-tracer's graph as :func:`load_ct_graph` reads it (layout: ``ct_runner``)."""

    adjacency: torch.Tensor          # [N, N] rows = targets, cols = sources
    active_features: torch.Tensor    # [n_active, 3] (layer, pos, feature), sorted
    activation_values: torch.Tensor  # [n_active]
    selected_features: torch.Tensor  # [n_selected] indices into active_features
    input_tokens: torch.Tensor       # [n_pos]
    logit_token_ids: torch.Tensor    # [n_logits]
    logit_probabilities: torch.Tensor  # [n_logits]
    logits_last: torch.Tensor        # [d_vocab], the model's own last-position logits
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])

    @property
    def n_layers(self) -> int:
        n_err = self.adjacency.shape[0] - self.n_features - self.n_pos - self.n_logits
        if n_err < 0 or n_err % self.n_pos:
            raise ArtifactError(f"adjacency of size {self.adjacency.shape[0]} does not fit "
                                f"{self.n_features} features, {self.n_pos} positions and "
                                f"{self.n_logits} logits")
        return n_err // self.n_pos

    @property
    def feature_keys(self) -> torch.Tensor:
        """``[n_selected, 3]`` (layer, pos, feature) of the feature nodes, in node order."""
        return self.active_features[self.selected_features]

    @property
    def feature_activations(self) -> torch.Tensor:
        return self.activation_values[self.selected_features]

    def offsets(self) -> dict[str, int]:
        """First node index of each block: features, errors, tokens, logits."""
        err = self.n_features
        tok = err + self.n_layers * self.n_pos
        return {"features": 0, "errors": err, "tokens": tok, "logits": tok + self.n_pos}


def load_ct_graph(out_file: str | os.PathLike) -> CTGraph:
    """Read a ``ct_runner`` output (its ``.json`` sidecar into ``meta`` when present)."""
    out_file = Path(out_file)
    try:
        t = load_file(str(out_file))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read circuit-tracer graph {out_file}: {e}") from e
    missing = [k for k in TENSOR_KEYS if k not in t]
    if missing:
        raise ArtifactError(f"{out_file} lacks {missing}")
    side = out_file.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    g = CTGraph(adjacency=t["adjacency_matrix"], active_features=t["active_features"],
                activation_values=t["activation_values"],
                selected_features=t["selected_features"], input_tokens=t["input_tokens"],
                logit_token_ids=t["logit_token_ids"],
                logit_probabilities=t["logit_probabilities"], logits_last=t["logits_last"],
                meta=meta)
    _ = g.n_layers  # validates the adjacency's size
    return g


def ct_node_keys(g: CTGraph) -> list[tuple]:
    """One key per node, in circuit-tracer's order: ``("feature", layer, pos, f)``,
    ``("error", layer, pos)``, ``("token", pos)``, ``("logit", token_id)``."""
    keys: list[tuple] = [("feature", *map(int, k)) for k in g.feature_keys.tolist()]
    keys += [("error", layer, pos) for layer in range(g.n_layers) for pos in range(g.n_pos)]
    keys += [("token", pos) for pos in range(g.n_pos)]
    keys += [("logit", int(t)) for t in g.logit_token_ids.tolist()]
    return keys


def _feature_order(g: CTGraph, feature_keys: torch.Tensor | None) -> torch.Tensor:
    """Row indices (into circuit-tracer's feature block) of ``feature_keys``."""
    if feature_keys is None:
        return torch.arange(g.n_features)
    want = torch.as_tensor(feature_keys, dtype=torch.long).reshape(-1, 3)
    index = {tuple(k): i for i, k in enumerate(g.feature_keys.tolist())}
    rows, absent = [], []
    for k in want.tolist():
        i = index.get(tuple(k))
        (absent.append(k) if i is None else rows.append(i))
    if absent:
        raise ArtifactError(f"{len(absent)} of {len(want)} requested features are not "
                            f"feature nodes of the circuit-tracer graph (first "
                            f"{absent[:3]} as (layer, pos, feature))")
    return torch.tensor(rows, dtype=torch.long)


def ct_edges_as_dense(g: CTGraph, feature_keys: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """circuit-tracer's adjacency cut into blocks (target first, then source):

    * ``feature_keys`` [F, 3] (layer, pos, feature) and ``feature_activations`` [F]
    * ``feature_to_feature`` [F target, F source]
    * ``error_to_feature`` [F, n_layers, n_pos], ``token_to_feature`` [F, n_pos]
    * ``feature_to_logit`` [n_logits, F], ``error_to_logit`` [n_logits, n_layers, n_pos],
      ``token_to_logit`` [n_logits, n_pos], ``logit_token_ids`` [n_logits]

    ``feature_keys`` (optional) puts the features in another engine's order (every key
    must be a feature node here; :class:`ArtifactError` otherwise)."""
    o = g.offsets()
    rows = _feature_order(g, feature_keys)
    a = g.adjacency
    f = a[: o["errors"]][rows]           # feature targets, all sources
    lg = a[o["logits"]:]                 # logit targets, all sources
    L, P = g.n_layers, g.n_pos
    return {
        "feature_keys": g.feature_keys[rows],
        "feature_activations": g.feature_activations[rows],
        "feature_to_feature": f[:, : o["errors"]][:, rows],
        "error_to_feature": f[:, o["errors"]: o["tokens"]].reshape(len(rows), L, P),
        "token_to_feature": f[:, o["tokens"]: o["logits"]],
        "feature_to_logit": lg[:, : o["errors"]][:, rows],
        "error_to_logit": lg[:, o["errors"]: o["tokens"]].reshape(g.n_logits, L, P),
        "token_to_logit": lg[:, o["tokens"]: o["logits"]],
        "logit_token_ids": g.logit_token_ids,
    }


EDGE_BLOCKS = ("feature_to_feature", "error_to_feature", "token_to_feature",
               "feature_to_logit", "error_to_logit", "token_to_logit")


def max_abs_diff_by_block(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
                          ) -> dict[str, float]:
    """Largest ``|ours - theirs|`` per edge block present in both, and ``"max"`` over
    them; both dicts in :func:`ct_edges_as_dense`'s layout and order."""
    out: dict[str, float] = {}
    for name in EDGE_BLOCKS:
        if name not in ours or name not in theirs:
            continue
        a, b = ours[name], theirs[name]
        if a.shape != b.shape:
            raise ConfigError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        out[name] = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if not out:
        raise ConfigError("no edge block in common")
    out["max"] = max(out.values())
    return out


def graph_edges_as_dense(graph: Any) -> dict[str, torch.Tensor]:
    """One of our graphs (:class:`interp.attribution.graph.Graph`, logit targets only) cut
    into :func:`ct_edges_as_dense`'s blocks, features in circuit-tracer's order
    (lexicographic in (layer, pos, feature)); logits in the graph's target order."""
    from .graph import ERROR, FEATURE, TARGET, TOKEN

    nodes = graph.nodes
    if any(t.get("kind") != "logit" for t in graph.targets):
        raise ConfigError("only graphs of plain logit targets compare with circuit-tracer's")
    kind = nodes.kind
    L, P = graph.n_layers, graph.n_pos
    fid = (kind == FEATURE).nonzero().flatten()
    keys = torch.stack([nodes.layer[fid], nodes.pos[fid], nodes.feature[fid]], 1)
    order = torch.tensor(sorted(range(len(fid)), key=lambda i: tuple(keys[i].tolist())),
                         dtype=torch.long)
    fid, keys = fid[order], keys[order]
    eid = (kind == ERROR).nonzero().flatten()
    err_grid = torch.full((L, P), -1, dtype=torch.long)
    err_grid[nodes.layer[eid], nodes.pos[eid]] = eid
    tid = (kind == TOKEN).nonzero().flatten()
    tok_line = torch.full((P,), -1, dtype=torch.long)
    tok_line[nodes.pos[tid]] = tid
    tgt = (kind == TARGET).nonzero().flatten()
    F, T = len(fid), len(tgt)
    row_of = torch.full((len(nodes),), -1, dtype=torch.long)
    row_of[fid] = torch.arange(F)
    row_of[tgt] = F + torch.arange(T)
    rows = torch.zeros(F + T, nodes.n_sources, dtype=torch.float32)
    for r, c, v in graph.edges:
        k = row_of[r]
        sel = k >= 0
        rows[k[sel][:, None], c[None, :]] = v[sel].float()
    f_rows, t_rows = rows[:F], rows[F:]
    return {
        "feature_keys": keys,
        "feature_activations": nodes.activation[fid].float(),
        "feature_to_feature": f_rows[:, fid],
        "error_to_feature": f_rows[:, err_grid.flatten()].reshape(F, L, P),
        "token_to_feature": f_rows[:, tok_line],
        "feature_to_logit": t_rows[:, fid],
        "error_to_logit": t_rows[:, err_grid.flatten()].reshape(T, L, P),
        "token_to_logit": t_rows[:, tok_line],
        "logit_token_ids": torch.tensor([int(t["token"]) for t in graph.targets]),
    }
