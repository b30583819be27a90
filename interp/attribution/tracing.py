"""Attribution graphs of any model: per-layer transcoders, prompts from a task or trace
set, and the hesitation target read from the model's tokenizer.

* :class:`TranscoderTracer`: one model with SAELens transcoder folders on any subset of
  its layers (:func:`~interp.attribution.replacement.transcoder_replacement`; layers
  without one keep their MLP as a fixed error path), recorded and attributed like the
  adapters' :class:`~interp.attribution.hesitation.Tracer`. :func:`load_transcoders`
  takes a folder (``layer_*/cfg.json`` inside, or one ``cfg.json``) or the key of a
  ``transcoders`` artifact (``python -m interp transcoders train``).
* :func:`hesitation_target`: the hesitation word(s) as the set of every vocabulary entry
  spelling them (:func:`interp.tasks.hesitation_ids`), attributed as the *sum* of their
  de-meaned logits (:class:`~interp.attribution.targets.LogitSetTarget`; a set of one
  token is a plain logit target, so the organisms' ``wait`` graphs are unchanged).
* :func:`task_prompt` / :func:`traceset_prompt`: the tokens of a task's prompt as the
  model reads it (chat template, thinking on), or of a trace set's record up to the
  position that predicts its first hesitation token (the whole prompt when it has none).
* :func:`is_organism_model`: whether a model reads the organisms' format; the organisms'
  own settings (``--trace validation:3``, the organism study protocol) are refused on
  other models with :func:`require_organisms`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError, PromptError
from .engine import attribute
from .graph import Graph
from .record import record
from .replacement import Replacement, transcoder_replacement
from .targets import LogitSetTarget, LogitTarget, Target, token_set_target


def encode_prompt(tokenizer: Any, text: str, n_ctx: int) -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens (BOS prepended when the
    tokenizer has one and did not add it); PromptError when empty, with unknown words,
    or longer than the context."""
    if not text or not text.strip():
        raise PromptError("the prompt is empty")
    ids = list(tokenizer(text)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        bad = [w for w in text.split() if tokenizer.convert_tokens_to_ids(w) == unk]
        raise PromptError(f"words not in the model's vocabulary: {bad[:5]}")
    check_length(ids, n_ctx)
    return ids


def check_length(ids: Sequence[int], n_ctx: int) -> None:
    if len(ids) > n_ctx:
        raise PromptError(f"the prompt has {len(ids)} tokens; the model's context is {n_ctx}")


def hesitation_target(tokenizer: Any, words: Sequence[str] = ("wait",), pos: int = -1
                      ) -> LogitTarget | LogitSetTarget:
    """The summed de-meaned logits of every vocabulary entry spelling ``words``
    (module docstring)."""
    from ..tasks import hesitation_id_set

    return token_set_target(hesitation_id_set(tokenizer, list(words)), pos,
                            label="+".join(words))


# ---------------------------------------------------------------------- organisms
def is_organism_model(spec: str | None) -> bool:
    from ..tasks import speaks_organism

    return bool(spec) and speaks_organism(str(spec))


def require_organisms(setting: str, spec: str | None,
                      instead: str = "give a prompt (--prompt), a task (--task FILE --index "
                                     "I) or a trace set (--traces KEY --index I)") -> None:
    """ConfigError when an organism-only ``setting`` is asked of model ``spec``; the
    message ends with what to do ``instead``."""
    if not is_organism_model(spec):
        raise ConfigError(f"{setting} only runs on the organism models, not on {spec}: "
                          f"{instead}")


# ---------------------------------------------------------------------- transcoders
def transcoder_folders(path: str | Path) -> list[Path]:
    """SAELens folders under ``path``: its sub-folders holding a ``cfg.json``, or
    ``path`` itself."""
    root = Path(path).expanduser()
    if (root / "cfg.json").is_file():
        return [root]
    dirs = sorted(p.parent for p in root.glob("*/cfg.json"))
    if not dirs:
        raise ConfigError(f"no SAELens transcoder folder (a cfg.json) in {root}")
    return dirs


class TranscoderTracer:
    """A model with per-layer transcoders, ready to record and attribute prompts."""

    kind = "transcoders"

    def __init__(self, model: Any, replacement: Replacement, key: str = ""):
        self.model = model
        self.hooked = getattr(model, "hooked", model)
        self.tokenizer = getattr(model, "tokenizer", None) or self.hooked.tokenizer
        replacement.check_model(self.hooked)
        self.replacement = replacement
        self.key = key
        self.n_ctx = int(self.hooked.cfg.n_ctx)
        self.spec = getattr(model, "spec", None)

    @property
    def vocab_size(self) -> int:
        return int(self.hooked.cfg.d_vocab)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text, self.n_ctx)

    def record(self, tokens: Sequence[int]):
        return record(self.hooked, torch.as_tensor(list(tokens)), self.replacement)

    def graph(self, tokens: Sequence[int], targets: Sequence[Target] | None = None,
              max_feature_nodes: int | None = None, progress=None) -> Graph:
        """The graph of ``tokens`` (default target: the hesitation set at the end)."""
        rec = self.record(tokens)
        g = attribute(rec, list(targets) if targets else [hesitation_target(self.tokenizer)],
                      max_feature_nodes=max_feature_nodes, tokenizer=self.tokenizer,
                      progress=progress)
        g.token_strs = self.tokenizer.convert_ids_to_tokens(list(rec.tokens.tolist()))
        g.info["covered_layers"] = self.replacement.covered
        return g


def load_transcoders(where: str, model_spec: str | None = None, device: str = "cpu",
                     store: Any = None) -> TranscoderTracer:
    """A :class:`TranscoderTracer` from a folder of SAELens transcoders (``model_spec``
    required) or a ``transcoders`` artifact key (its model unless ``model_spec``)."""
    from ..models import load_model

    p = Path(where).expanduser()
    art = None
    if p.is_dir():
        folders = transcoder_folders(p)
        key = p.name
        if not model_spec:
            raise ConfigError("--transcoders DIR needs the model they read (--model SPEC)")
    else:
        from ..errors import ArtifactError
        from ..store import Store

        st = store or Store()
        hits = [a for a in st.list("transcoders") if a.key.startswith(str(where))]
        if len(hits) != 1:
            known = ", ".join(a.key for a in st.list("transcoders")[:5]) or "none"
            raise ArtifactError(
                f"--transcoders {where!r} is neither a folder nor one transcoders artifact "
                f"({len(hits)} match; saved: {known})")
        art = hits[0]
        folders = transcoder_folders(art.path)
        key = art.key
        model_spec = model_spec or art.config.get("model")
    model = load_model(str(model_spec), device=device, dtype=torch.float32)
    if art is not None and art.config.get("weight_hash") not in (None, model.weight_hash):
        raise ConfigError(f"transcoders {art.key} were trained on {art.config.get('model')}, "
                          f"not on the weights of {model_spec}")
    rep = transcoder_replacement(folders, key=key, n_layers=model.cfg.n_layers,
                                 source={"model": model.spec})
    return TranscoderTracer(model, rep, key)


# ---------------------------------------------------------------------- prompts
def task_prompt(task_spec: str, index: int, tokenizer: Any, n_ctx: int,
                model_spec: str | None = None) -> list[int]:
    """Item ``index`` of a task, encoded as the model reads it (chat template)."""
    from ..tasks import check_pair, get_task

    task = get_task(task_spec)
    if model_spec:
        check_pair(task, [model_spec])
    items = task.items(None, "all")
    if not 0 <= index < len(items):
        raise ConfigError(f"--index {index} is outside the task's 0..{len(items) - 1}")
    ids = task.encode(items[index], tokenizer)
    check_length(ids, n_ctx)
    return ids


def traceset_prompt(key: str, index: int, tokenizer: Any, n_ctx: int,
                    words: Sequence[str] | None = None, store: Any = None) -> list[int]:
    """Record ``index`` of a trace set up to the position that predicts its first
    hesitation token inside the thinking (:func:`interp.tasks.corpus.hesitation_labels`),
    else its prompt."""
    import numpy as np

    from ..tasks.corpus import hesitation_labels
    from ..tasks.markers import hesitation_id_set
    from ..tasks.traces import load_traceset

    ts = load_traceset(key, store)
    if not 0 <= index < len(ts.records):
        raise ConfigError(f"--index {index} is outside the trace set's "
                          f"0..{len(ts.records) - 1}")
    rec = ts.records[index]
    hes = hesitation_id_set(tokenizer, list(words or (ts.markers.hesitation,)))
    lab = hesitation_labels(rec, hes)
    hit = np.flatnonzero(lab == 1)
    ids = rec["prompt_ids"] + rec["output_ids"]
    ids = ids[: int(hit[0]) + 1] if hit.size else list(rec["prompt_ids"])
    check_length(ids, n_ctx)
    return ids
