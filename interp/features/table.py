"""Reading a ``features`` artifact: per-feature data for tables, maps and cards.

:class:`FeatureTable` wraps a saved collection (see :mod:`interp.features.pipeline` for
the layout) and answers per-feature questions without a model: examples with their
per-token activations, histogram, regions, logit lens, label AUROCs, ablation effect,
plus whole-table frames (one row per feature) for the map and the rankings. Feature ids
are ``"<layer>:<index>"``; ``g`` is the global number (layer after layer).
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..store import Artifact
from .collect import N_HIST
from .corpus import REGIONS
from .pipeline import EXAMPLE_KINDS, label_display

ID_RE = re.compile(r"^\s*L?(\d+)\s*[:_/.,\s]\s*F?(\d+)\s*$", re.IGNORECASE)
CONTEXT = 24  # tokens shown on each side of an example's position


class FeatureTable:
    """A loaded ``features`` artifact (see the module docstring)."""

    def __init__(self, art: Artifact):
        self.art, self.key = art, art.key
        self.meta = art.meta
        self.t = {k: v.numpy() for k, v in art.tensors.items()}
        m = self.meta
        self.layers: list[int] = [int(x) for x in m["layers"]]
        self.d_sae = {int(k): int(v) for k, v in m["d_sae"].items()}
        self.offsets = {int(k): int(v) for k, v in m["offsets"].items()}
        self.F = int(m["n_features"])
        self.label_names: list[str] = list(m.get("label_names", []))
        self.vocab: dict[str, str] = art.read_json("vocab.json")
        self.seq_names: list[str] = art.read_json("sequences.json")
        abl = art.read_json("ablation.json") if "ablation.json" in art.files else []
        self.ablation: dict[int, dict[str, Any]] = {int(a["g"]): a for a in abl}
        self._ex_start = np.searchsorted(self.t["ex_feat"], np.arange(self.F + 1))
        o = np.argsort(self.t["tok_pair"], kind="stable")
        self._tok = {k: self.t[k][o] for k in ("tok_pair", "tok_pos", "tok_act")}
        self._tok_start = np.searchsorted(self._tok["tok_pair"],
                                          np.arange(len(self.t["pair_feat"]) + 1))

    # -------------------------------------------------------------- ids
    @property
    def source_key(self) -> str:
        return str(self.art.config["source"]["key"])

    def gid(self, layer: int, index: int) -> int:
        if layer not in self.offsets or not 0 <= index < self.d_sae[layer]:
            raise ConfigError(f"no feature {layer}:{index} in this set")
        return self.offsets[layer] + index

    def lid(self, g: int) -> tuple[int, int]:
        if not 0 <= g < self.F:
            raise ConfigError(f"feature number {g} out of range")
        for layer in reversed(self.layers):
            if g >= self.offsets[layer]:
                return layer, g - self.offsets[layer]
        raise ConfigError(f"feature number {g} out of range")

    def fid(self, g: int) -> str:
        layer, i = self.lid(g)
        return f"{layer}:{i}"

    def parse(self, text: str) -> int | None:
        """``"2:17"`` (or ``L2_F17``, ``2/17``) -> global number; None if not an id of
        this set."""
        m = ID_RE.match(str(text or ""))
        if not m:
            return None
        try:
            return self.gid(int(m.group(1)), int(m.group(2)))
        except ConfigError:
            return None

    def token(self, i: int) -> str:
        return self.vocab.get(str(int(i)), f"<{int(i)}>")

    @cached_property
    def word_level(self) -> bool:
        """True when no stored token starts with whitespace (a word-level vocabulary such
        as the organisms': tokens are separated by spaces in text)."""
        return not any(v[:1].isspace() for v in self.vocab.values())

    def text(self, ids: Any) -> str:
        """Token ids as text a tokenizer reads back: joined with spaces for a word-level
        vocabulary, else concatenated; a leading special-looking token (``<...>``, such
        as BOS, which the tokenizer adds again) is left out."""
        toks = [self.token(i) for i in ids]
        if toks and toks[0].startswith("<") and toks[0].endswith(">"):
            toks = toks[1:]
        return (" " if self.word_level else "").join(toks).strip()

    # -------------------------------------------------------------- sequences
    def sequence(self, seq: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(token ids, region codes, name)`` of a stored sequence."""
        idx = self.t["seq_index"]
        j = int(np.searchsorted(idx, seq))
        if j >= len(idx) or idx[j] != seq:
            raise ConfigError(f"sequence {seq} is not stored with this collection")
        off = self.t["seq_offsets"]
        s, e = int(off[j]), int(off[j + 1])
        return self.t["seq_tokens"][s:e], self.t["seq_regions"][s:e], self.seq_names[j]

    # -------------------------------------------------------------- one feature
    def examples(self, g: int, context: int | None = CONTEXT) -> list[dict[str, Any]]:
        """The shown examples of ``g`` (top, then quantile, then random): sequence,
        position, activation, and tokens with their activations (a window of
        ``context`` tokens around the position; None: the whole sequence)."""
        out = []
        for e in range(int(self._ex_start[g]), int(self._ex_start[g + 1])):
            seq, pos = int(self.t["ex_seq"][e]), int(self.t["ex_pos"][e])
            ids, regs, name = self.sequence(seq)
            p = int(self.t["ex_pair"][e])
            s, t = int(self._tok_start[p]), int(self._tok_start[p + 1])
            acts = np.zeros(len(ids), dtype=np.float32)
            acts[self._tok["tok_pos"][s:t]] = self._tok["tok_act"][s:t]
            lo, hi = (0, len(ids)) if context is None else (
                max(0, pos - context), min(len(ids), pos + context + 1))
            out.append({
                "kind": EXAMPLE_KINDS[int(self.t["ex_kind"][e])], "seq": seq, "name": name,
                "pos": pos, "act": float(self.t["ex_act"][e]), "start": lo,
                "length": len(ids), "tokens": [self.token(i) for i in ids[lo:hi]],
                "token_ids": ids[lo:hi].tolist(), "acts": acts[lo:hi].tolist(),
                "regions": [REGIONS[r] for r in regs[lo:hi]],
            })
        return out

    def histogram(self, g: int) -> pd.DataFrame:
        """Counts per bin (``bin`` 0 = inactive), with the bin's range."""
        edges = self.meta["hist_edges"]
        counts = self.t["hist"][g]
        rows = []
        for j in range(N_HIST):
            lo, hi = edges[j], edges[j + 1]
            label = "0" if j == 0 else (f"(0, {hi:.3g})" if j == 1 else f"[{lo:.3g}, {hi:.3g})")
            rows.append({"bin": j, "low": lo, "high": hi, "range": label,
                         "count": int(counts[j])})
        return pd.DataFrame(rows)

    def regions(self, g: int) -> pd.DataFrame:
        """Per region: tokens, active tokens, firing rate, activation mass and its share."""
        tok = self.t["region_tokens"]
        act = self.t["region_active"][g]
        mass = self.t["region_sum"][g]
        tot = mass.sum()
        return pd.DataFrame({
            "region": list(REGIONS), "tokens": tok.astype(int), "active": act.astype(int),
            "rate": np.where(tok > 0, act / np.maximum(tok, 1), 0.0),
            "mass": mass, "mass_share": mass / tot if tot > 0 else np.zeros(len(REGIONS))})

    def lens(self, g: int) -> pd.DataFrame:
        """Logit lens of the decoder direction: top (promoted) and bottom tokens."""
        rows = [{"side": "top", "rank": r + 1, "token": self.token(i), "token_id": int(i),
                 "logit": float(v)} for r, (i, v) in enumerate(
                     zip(self.t["lens_top_ids"][g], self.t["lens_top_vals"][g]))]
        rows += [{"side": "bottom", "rank": r + 1, "token": self.token(i), "token_id": int(i),
                  "logit": float(v)} for r, (i, v) in enumerate(
                      zip(self.t["lens_bot_ids"][g], self.t["lens_bot_vals"][g]))]
        return pd.DataFrame(rows)

    def aurocs(self, g: int) -> pd.DataFrame:
        """Per label: AUROC on the choose split, the report split and both."""
        rows = []
        for li, name in enumerate(self.label_names):
            lm = self.meta["labels"].get(name, {})
            a = self.t["auroc"][li, :, g]
            rows.append({"label": label_display(name), "choose": _f(a[0]), "report": _f(a[1]),
                         "both": _f(a[2]), "n_pos": sum(lm.get("n_pos", [0, 0])),
                         "n_neg": sum(lm.get("n_neg", [0, 0]))})
        return pd.DataFrame(rows, columns=["label", "choose", "report", "both", "n_pos",
                                           "n_neg"])

    def stats(self, g: int) -> dict[str, Any]:
        n = max(int(self.meta["n_tokens"]), 1)
        act = int(self.t["active"][g])
        reg = self.regions(g)
        return {
            "id": self.fid(g), "g": int(g), "layer": self.lid(g)[0], "index": self.lid(g)[1],
            "density": act / n, "active_tokens": act, "max": float(self.t["act_max"][g]),
            "mean_when_active": float(self.t["act_sum"][g] / act) if act else 0.0,
            "decoder_norm": float(self.t["decoder_norm"][g]),
            "hesitation_score": float(self.t["hes_score"][g]),
            "hesitation_precision": float(self.t["hes_precision"][g]),
            "hesitation_coverage": float(self.t["hes_coverage"][g]),
            "hesitation_lift": _f(self.t["hes_lift"][g]),
            "main_region": (reg.loc[reg["mass"].idxmax(), "region"] if act else None),
        }

    def ablation_of(self, g: int) -> dict[str, Any] | None:
        a = self.ablation.get(int(g))
        if a is None:
            return None
        return {**a, "up": [[self.token(t), v] for t, v in a["up"]],
                "down": [[self.token(t), v] for t, v in a["down"]]}

    # -------------------------------------------------------------- whole table
    @cached_property
    def summary(self) -> pd.DataFrame:
        """One row per feature: id, layer, index, density, max, hesitation score,
        dominant region (by activation mass), top logit-lens token, label AUROCs (both
        splits)."""
        n = max(int(self.meta["n_tokens"]), 1)
        layer = np.empty(self.F, dtype=int)
        index = np.empty(self.F, dtype=int)
        for lay in self.layers:
            o, d = self.offsets[lay], self.d_sae[lay]
            layer[o:o + d] = lay
            index[o:o + d] = np.arange(d)
        rs = self.t["region_sum"]
        main = np.where(rs.sum(1) > 0, np.asarray(REGIONS, dtype=object)[rs.argmax(1)], "none")
        df = pd.DataFrame({
            "id": [f"{a}:{b}" for a, b in zip(layer, index)], "g": np.arange(self.F),
            "layer": layer, "index": index, "density": self.t["active"] / n,
            "max": self.t["act_max"], "hesitation": self.t["hes_score"],
            "region": main,
            "top_token": [self.token(i) for i in self.t["lens_top_ids"][:, 0]],
        })
        for li, name in enumerate(self.label_names):
            df["auroc:" + label_display(name)] = self.t["auroc"][li, 2]
        return df

    def label_ranking(self, name: str) -> pd.DataFrame:
        """Features ranked by AUROC on the choose split, with the report split's AUROC."""
        lm = self.meta["labels"].get(name, {})
        return pd.DataFrame(lm.get("ranking", []), columns=["id", "g", "select_auroc",
                                                            "eval_auroc"])

    def best_per_label(self) -> pd.DataFrame:
        """One row per label: the feature chosen on the choose split and its AUROC on
        the report split (the headline figure), with the class counts."""
        rows = []
        for name in self.label_names:
            lm = self.meta["labels"].get(name, {})
            b = lm.get("best", {})
            rows.append({"label": label_display(name), "feature": b.get("id"),
                         "g": b.get("g"), "choose_auroc": b.get("select_auroc"),
                         "report_auroc": b.get("eval_auroc"),
                         "fires_on_positives": b.get("eval_pos_rate"),
                         "fires_on_negatives": b.get("eval_neg_rate"),
                         "n_pos": sum(lm.get("n_pos", [0, 0])),
                         "n_neg": sum(lm.get("n_neg", [0, 0]))})
        return pd.DataFrame(rows, columns=["label", "feature", "g", "choose_auroc",
                                           "report_auroc", "fires_on_positives",
                                           "fires_on_negatives", "n_pos", "n_neg"])

    def hesitation_ranking(self, n: int = 20) -> pd.DataFrame:
        s = self.t["hes_score"]
        order = np.argsort(-s, kind="stable")[:n]
        return pd.DataFrame([{
            "id": self.fid(int(g)), "g": int(g), "score": float(s[g]),
            "precision": float(self.t["hes_precision"][g]),
            "coverage": float(self.t["hes_coverage"][g]), "lift": _f(self.t["hes_lift"][g]),
            "density": float(self.t["active"][g]) / max(int(self.meta["n_tokens"]), 1),
            "top_token": self.token(self.t["lens_top_ids"][g, 0])} for g in order if s[g] > 0],
            columns=["id", "g", "score", "precision", "coverage", "lift", "density",
                     "top_token"])

    def search(self, query: str, limit: int = 50) -> list[int]:
        """Features matching ``query``: an id (``2:17``), else a token that is among a
        feature's top-3 logit-lens tokens or is the token at its top example's position
        (case- and space-insensitive); ranked by maximum activation."""
        g = self.parse(query)
        if g is not None:
            return [g]
        q = str(query or "").strip().lower()
        if not q:
            return []
        ids = {int(k) for k, v in self.vocab.items() if v.strip().lower() == q}
        if not ids:
            return []
        idset = np.array(sorted(ids))
        lens_hit = np.isin(self.t["lens_top_ids"][:, :3], idset).any(1)
        top_tok = np.full(self.F, -1)
        first = self._ex_start[:-1]
        has = self._ex_start[1:] > first
        for g in np.nonzero(has)[0]:
            e = int(first[g])
            ids_, _, _ = self.sequence(int(self.t["ex_seq"][e]))
            top_tok[g] = ids_[int(self.t["ex_pos"][e])]
        hit = np.nonzero(lens_hit | np.isin(top_tok, idset))[0]
        order = hit[np.argsort(-self.t["act_max"][hit], kind="stable")]
        return [int(x) for x in order[:limit]]


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def find_features(stores: dict[str, Any], source_key: str | None = None
                  ) -> list[tuple[str, Artifact]]:
    """Every ``features`` artifact in the named stores (``(store name, artifact)``,
    newest first per store), optionally only those of one source."""
    out = []
    for name, st in stores.items():
        for a in st.list("features"):
            if source_key is None or a.config.get("source", {}).get("key") == source_key:
                out.append((name, a))
    return out


def of_pair(art: Artifact, base: str, fine: str) -> bool:
    """Whether a ``features`` collection belongs to the pair (``base``, ``fine``): an
    adapter set trained on that pair, or transcoders of either of its models. A
    collection that does not record its models is kept."""
    from ..models import same_model

    src = art.meta.get("source") or {}
    if src.get("kind") == "adapters" and src.get("pair"):
        pair = src["pair"]
        return same_model(str(pair.get("base")), base) and \
            same_model(str(pair.get("reasoner")), fine)
    if src.get("kind") == "transcoders" and src.get("model"):
        return any(same_model(str(src["model"]), m) for m in (base, fine))
    return True


def describe_corpus(spec: dict[str, Any]) -> str:
    kind = spec.get("kind", "?")
    if kind == "organism":
        return (f"{spec.get('n')} organism traces ({spec.get('split')} split, "
                f"seed {spec.get('seed')})")
    if kind in ("text", "jsonl"):
        return f"{spec.get('n')} sequences from {kind} file {spec.get('path')}"
    if kind == "traceset":
        return (f"{spec.get('n')} traces of {spec.get('model')} (trace set {spec.get('key')}, "
                f"{spec.get('split')} split)")
    return f"{spec.get('n', '?')} sequences ({kind})"

