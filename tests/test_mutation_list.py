"""The mutation check's list stays in step with the code: every mutant's text occurs in
exactly one place of its file (a reformatted line would otherwise make the mutant a
silent no-op), and every test it names exists."""

from __future__ import annotations

from tests.mutation_check import MUTANTS, ROOT


def test_every_mutant_matches_one_place_and_names_real_tests():
    for path, old, new, tests, what in MUTANTS:
        text = (ROOT / path).read_text()
        assert text.count(old) == 1, f"{what}: {old!r} occurs {text.count(old)}x in {path}"
        assert old != new, what
        for t in tests:
            file, _, name = t.partition("::")
            assert (ROOT / file).exists(), f"{what}: no {file}"
            if name:
                assert f"def {name}" in (ROOT / file).read_text(), f"{what}: no {t}"
