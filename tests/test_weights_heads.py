"""Per-head weight differences against manual slices of the HF projection weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.weights import head_diff_pivot, head_diff_table


def _state(path):
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return {k: v.detach().double() for k, v in m.state_dict().items()}


def test_head_slices_match_a_manual_computation(tiny_pair_dirs):
    base, fine = tiny_pair_dirs   # Qwen2: 4 query heads, 2 key-value heads, d_head 8
    t = head_diff_table(base, fine)
    sa, sb = _state(base), _state(fine)
    d_head = 8
    assert len(t) == 2 * (4 + 2 + 2 + 4)
    assert set(t["matrix"]) == {"Q", "K", "V", "O"}
    for row in t.itertuples():
        proj = {"Q": "q_proj", "K": "k_proj", "V": "v_proj", "O": "o_proj"}[row.matrix]
        name = f"model.layers.{row.layer}.self_attn.{proj}.weight"
        sl = slice(row.head * d_head, (row.head + 1) * d_head)
        a, b = (s[name][:, sl] if row.matrix == "O" else s[name][sl] for s in (sa, sb))
        d, na = torch.linalg.vector_norm(b - a).item(), torch.linalg.vector_norm(a).item()
        assert row.delta_norm == pytest.approx(d, rel=1e-9)
        assert row.norm_a == pytest.approx(na, rel=1e-9)
        assert row.relative == pytest.approx(d / na, rel=1e-9)
    # the heads of one projection add up to the whole tensor (sum of squares)
    q0 = t[(t["layer"] == 0) & (t["matrix"] == "Q")]
    q = "model.layers.0.self_attn.q_proj.weight"
    whole = sb[q] - sa[q]
    assert float((q0["delta_norm"] ** 2).sum()) == pytest.approx(
        float((whole ** 2).sum()), rel=1e-9)


def test_a_change_to_one_head_shows_in_that_cell_only(tiny_pair_dirs, tmp_path):
    import shutil

    base = tiny_pair_dirs[0]
    fine = tmp_path / "fine"
    shutil.copytree(base, fine)
    m = AutoModelForCausalLM.from_pretrained(str(fine), dtype=torch.float32)
    with torch.no_grad():
        m.model.layers[1].self_attn.o_proj.weight[:, 16:24] += 0.5   # head 2 of W_O
        m.model.layers[0].self_attn.k_proj.weight[8:16] += 0.5       # key-value head 1
    m.save_pretrained(fine)
    pv = head_diff_pivot(head_diff_table(base, fine))
    assert list(pv.columns) == [f"{m} h{h}" for m, n in (("Q", 4), ("K", 2), ("V", 2),
                                                        ("O", 4)) for h in range(n)]
    changed = {(r, c) for r in pv.index for c in pv.columns if pv.loc[r, c] > 0}
    assert changed == {(1, "O h2"), (0, "K h1")}
    assert list(head_diff_pivot(head_diff_table(base, fine), "delta_norm").index) == [0, 1]
