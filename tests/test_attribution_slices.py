"""Attribution through transcoders on a slice of layers, and token-set targets.

A 4-layer random Qwen2 model with SAELens transcoder folders for layers 1 and 3 only:
layers 0 and 2 keep the model's MLP as a fixed path (its whole output is the layer's
error node). The reference is the perturbation check of :mod:`tests.test_attribution`
(every edge = the target's change when its source is zeroed in the frozen model), on
dictionaries read here from the files directly (not through the replacement builder),
so a transcoder put at the wrong layer, or a dropped id of a token set, shows.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from interp.attribution.engine import attribute
from interp.attribution.graph import ERROR, FEATURE
from interp.attribution.record import record
from interp.attribution.replacement import FeatureLayer, Replacement, transcoder_replacement
from interp.attribution.targets import LogitSetTarget, LogitTarget, token_set_target
from interp.errors import ConfigError
from interp.models import load_model
from tests.conftest import make_tiny_checkpoint
from tests.test_attribution import DT, assert_edges_match, prompt, reference_edges

COVERED = (1, 3)


def write_transcoder(folder, layer: int, d: int, n: int, seed: int) -> None:
    """One SAELens transcoder folder (random weights) reading ``ln2.hook_normalized``."""
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    g = torch.Generator().manual_seed(seed)
    cfg = TranscoderConfig(
        d_in=d, d_sae=n, d_out=d, dtype="float32", device="cpu",
        apply_b_dec_to_input=False, normalize_activations="none",
        metadata=SAEMetadata(model_name="tiny", hook_name=f"blocks.{layer}.ln2.hook_normalized",
                             hook_name_out=f"blocks.{layer}.hook_mlp_out", hook_layer=layer,
                             hook_layer_out=layer, prepend_bos=True, context_size=None,
                             model_class_name="HookedTransformer"))
    tc = Transcoder(cfg)
    W_enc = torch.randn(d, n, generator=g)
    with torch.no_grad():
        tc.W_enc.copy_(W_enc / W_enc.norm(dim=0, keepdim=True))
        tc.b_enc.copy_(-0.3 + 0.1 * torch.randn(n, generator=g))
        tc.W_dec.copy_(0.3 * torch.randn(n, d, generator=g))
        tc.b_dec.copy_(0.05 * torch.randn(d, generator=g))
    tc.save_model(str(folder))


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    ckpt = make_tiny_checkpoint(root / "ckpt", "qwen2", seed=5, num_hidden_layers=4)
    model = load_model(str(ckpt), device="cpu", dtype="float64")
    d = model.hooked.cfg.d_model
    dirs = []
    for k, layer in enumerate(COVERED):
        write_transcoder(root / f"tc{layer}", layer, d, 12, seed=10 + k)
        dirs.append(root / f"tc{layer}")
    return model, dirs


def files_replacement(dirs, n_layers: int, d: int) -> Replacement:
    """The reference dictionaries: each folder's tensors at the layer it was written for,
    zero-width dictionaries (all error) elsewhere."""
    layers = [FeatureLayer(torch.zeros(d, 0, dtype=DT), torch.zeros(0, dtype=DT),
                           torch.zeros(0, d, dtype=DT), torch.zeros(d, dtype=DT))
              for _ in range(n_layers)]
    for layer, folder in zip(COVERED, dirs):
        w = {k: v.double() for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
        layers[layer] = FeatureLayer(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"],
                                     site="normalized")
    return Replacement(layers, keep_mlp=False)


def test_slice_of_layers_edges_equal_perturbations(deep):
    """Transcoders at layers 1 and 3 only: every edge (features, errors, tokens; into a
    token-set target, a logit target and the features) equals the effect of zeroing its
    source in the frozen model; layers 0 and 2 have no feature nodes and their error
    nodes carry the MLP's whole output."""
    model, dirs = deep
    h = model.hooked
    L, d = h.cfg.n_layers, h.cfg.d_model
    rep = transcoder_replacement(list(reversed(dirs)), n_layers=L)   # order does not matter
    assert rep.covered == list(COVERED) and rep.n_layers == L
    toks = prompt(6, seed=4)
    rec = record(model, toks, rep, dtype=DT)
    graph = attribute(rec, [LogitSetTarget((5, 9, 17), -1), LogitTarget(7, -2)])
    n = graph.nodes
    feat_layers = set(n.layer[n.kind == FEATURE].tolist())
    assert feat_layers == set(COVERED)
    assert int((n.kind == FEATURE).sum()) > 5
    # an uncovered layer's error node is the MLP's output there (BOS excepted)
    with torch.no_grad():
        _, cache = h.run_with_cache(toks[None], names_filter=lambda nm: nm.endswith(
            "hook_mlp_out"))
    for layer in (0, 2):
        mlp = cache[f"blocks.{layer}.hook_mlp_out"][0]
        errs = (n.kind == ERROR) & (n.layer == layer) & (n.pos > 0)
        got = n.activation[errs].double()
        want = mlp[n.pos[errs]].norm(dim=-1)
        assert torch.allclose(got, want.to(got.dtype), rtol=1e-5)
    ref, _ = reference_edges(graph, files_replacement(dirs, L, d), h, toks)
    assert_edges_match(graph, ref)


def test_token_set_target_value_and_completeness(deep):
    """The set target's value is the sum of the set's de-meaned logits from a plain
    forward pass; its edges from every source plus the constant part (the value with
    every source zeroed) give that value back."""
    model, dirs = deep
    h = model.hooked
    rep = transcoder_replacement(dirs, n_layers=h.cfg.n_layers)
    toks = prompt(8, seed=6)
    ids = (4, 11, 23)
    rec = record(model, toks, rep, dtype=DT)
    graph = attribute(rec, [LogitSetTarget(ids, -1)])
    with torch.no_grad():
        lg = h(toks[None])[0, -1].double()
    want = float(lg[list(ids)].sum() - len(ids) * lg.mean())
    t = int(graph.target_ids()[0])
    assert float(graph.nodes.activation[t]) == pytest.approx(want, rel=1e-6)  # float32
    assert graph.targets[0]["kind"] == "logit_set" and graph.targets[0]["tokens"] == list(ids)
    p = torch.softmax(lg, -1)[list(ids)].sum()
    assert graph.targets[0]["prob"] == pytest.approx(float(p), rel=1e-6)
    # the set target is the sum of the single-token targets, edge by edge
    single = attribute(rec, [LogitTarget(i, -1) for i in ids])
    rows = graph.edges.dense(len(graph.nodes))[t, : graph.nodes.n_sources]
    dense1 = single.edges.dense(len(single.nodes))
    rows1 = dense1[single.target_ids()][:, : single.nodes.n_sources].sum(0)
    assert torch.allclose(rows.double(), rows1.double(), atol=1e-9)


def test_slice_settings_are_checked(deep, tmp_path):
    model, dirs = deep
    L = model.hooked.cfg.n_layers
    with pytest.raises(ConfigError, match="cover every layer from 0"):
        transcoder_replacement(dirs)                    # no depth: gaps are refused
    with pytest.raises(ConfigError, match=r"layers \[3\] but the model has 2"):
        transcoder_replacement(dirs, n_layers=2)
    with pytest.raises(ConfigError, match="two transcoders for layer 1"):
        transcoder_replacement([dirs[0], dirs[0]], n_layers=L)
    assert isinstance(token_set_target([3]), LogitTarget)
    assert token_set_target([9, 3, 9]).tokens == (3, 9)
    with pytest.raises(ConfigError, match="empty"):
        token_set_target([])
