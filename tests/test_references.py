"""eval/references.json: parses, every row names its source, units convert, the UNITER gap is stated."""
from __future__ import annotations

import pytest

from eval.references import UNIT_TO_FRACTION, benchmarks, load_references, reference_gaps
from mclip_hbt.languages import canonical_lang


@pytest.mark.parametrize("benchmark", ["xtd10", "multi30k"])
def test_every_row_names_a_source_and_uses_known_units_and_languages(benchmark):
    rows = load_references(benchmark)
    assert rows, f"no reference rows for {benchmark}"
    for row in rows:
        assert row.source and all(str(v).strip() for v in row.source.values()), row.name
        assert row.unit in UNIT_TO_FRACTION
        assert all(canonical_lang(lang) == lang for lang in row.values), row.name
        upper = 100.0 if row.unit == "percent" else 1.0
        assert all(0.0 <= v <= upper for v in row.values.values()), row.name
        assert all(0.0 <= v <= 1.0 for v in row.fractions().values())
        assert "(published" in row.label


def test_file_lists_the_benchmarks_and_states_the_uniter_gap():
    assert {"xtd10", "multi30k"} <= set(benchmarks())
    assert load_references("no-such-benchmark") == []
    assert any("UNITER" in gap for gap in reference_gaps())
