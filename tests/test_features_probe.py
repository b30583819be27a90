"""Linear label probes (interp.features.probe) on hand-made labels of organism traces:
a label the input token decides is read out everywhere, a coin flip nowhere."""

from __future__ import annotations

import numpy as np
import pytest

from interp.errors import ConfigError
from interp.features.corpus import Corpus, CorpusItem, organism_corpus
from interp.features.probe import best_site, feature_layer_reference, label_probes, sites
from interp.organisms.task import TOKEN_ID


@pytest.fixture(scope="module")
def reasoner():
    from interp.models import load_model

    return load_model("organism:reasoner", device="cpu")


def _corpus(n: int = 60) -> Corpus:
    base = list(organism_corpus(n, seed=3).make())
    rng = np.random.default_rng(0)
    digits = {TOKEN_ID[str(d)] for d in range(10)}

    def make():
        for it in base:
            ids = np.array(it.ids)
            is_digit = np.isin(ids, list(digits))
            seven = np.where(is_digit, (ids == TOKEN_ID["7"]).astype(np.int8), -1)
            coin = np.where(is_digit, rng.integers(0, 2, len(ids)), -1).astype(np.int8)
            yield CorpusItem(it.ids, it.regions, {"seven": seven, "coin": coin,
                                                  "seq:x": np.zeros(len(ids), np.int8)},
                             it.id)
    return Corpus(make, {"kind": "test"}, n, ["seven", "coin", "seq:x"])


def test_probes_read_what_the_token_decides_and_nothing_else(reasoner):
    res = label_probes(reasoner.hooked, _corpus(), max_seqs=60)
    assert res["sites"] == [name for name, _ in sites(4)]
    assert set(res["labels"]) == {"seven", "coin"}          # per-sequence labels skipped
    seven, coin = res["labels"]["seven"], res["labels"]["coin"]
    assert min(seven["L0 MLP input"], seven["L0 output"], seven["L1 MLP input"]) > 0.99
    assert min(seven.values()) > 0.8       # deeper layers keep less of the input token
    assert all(abs(v - 0.5) < 0.1 for v in coin.values())
    assert res["counts"]["seven"]["positives"] > 20
    site, auc = best_site(res, "seven")
    assert site == "L0 MLP input" and auc == seven["L0 MLP input"]
    assert feature_layer_reference(res, "seven", 2) == seven["L2 MLP input"]
    assert feature_layer_reference(res, "nosuch", 2) is None


def test_probes_refuse_a_corpus_without_token_labels(reasoner):
    c = Corpus(lambda: iter(()), {"kind": "test"}, 0, ["seq:x"])
    with pytest.raises(ConfigError):
        label_probes(reasoner.hooked, c)
