"""Published reference rows (``eval/references.json``): other people's numbers, each with its source.

They are shown beside our measurements in tables and plots, always marked "(published)", and are
never written into a result JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REFERENCES_FILE = Path(__file__).with_name("references.json")

#: Multipliers from a published unit to the fractions our evaluators report.
UNIT_TO_FRACTION = {"percent": 0.01, "fraction": 1.0}


@dataclass(frozen=True)
class ReferenceRow:
    benchmark: str
    name: str
    metric: str
    unit: str
    values: dict[str, float]  # language → value in ``unit``
    source: dict[str, str]
    caveat: str = ""

    def fractions(self) -> dict[str, float]:
        """The values as fractions (how our result JSONs store recalls)."""
        scale = UNIT_TO_FRACTION[self.unit]
        return {lang: value * scale for lang, value in self.values.items()}

    @property
    def label(self) -> str:
        return f"{self.name} (published{'; caveat in eval/references.json' if self.caveat else ''})"

    def citation(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.source.items())


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def benchmarks(path: Path = REFERENCES_FILE) -> list[str]:
    return sorted(_load(path)["benchmarks"])


def load_references(benchmark: str, path: Path = REFERENCES_FILE) -> list[ReferenceRow]:
    """The reference rows of ``benchmark`` ("xtd10", "multi30k"); an empty list when it has none."""
    data = _load(path)["benchmarks"].get(benchmark)
    if data is None:
        return []
    rows = []
    for row in data["rows"]:
        if row["unit"] not in UNIT_TO_FRACTION:
            raise ValueError(f"{path}: row {row['name']!r} has unknown unit {row['unit']!r}")
        rows.append(ReferenceRow(benchmark=benchmark, name=row["name"], metric=data["metric"], unit=row["unit"],
                                 values=dict(row["values"]), source=dict(row["source"]),
                                 caveat=row.get("caveat", "")))
    return rows


def reference_gaps(path: Path = REFERENCES_FILE) -> list[str]:
    """Statements of what no reachable primary source gives (e.g. UNITER's own numbers)."""
    return list(_load(path).get("gaps", []))
