"""docs/security.md maps each OWASP risk to a control and the tests that prove it: keep it true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows(prefix: str) -> dict[str, str]:
    rows = {}
    for line in MAP.read_text().splitlines():
        found = re.match(rf"\| \*\*({prefix}\d\d) ", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_every_test_the_map_names_exists() -> None:
    references = REFERENCE.findall(MAP.read_text())
    assert len(references) > 40
    missing = []
    for path, name in references:
        source = ROOT / path
        defined = source.is_file() and re.search(
            rf"^(async )?def {name}\(", source.read_text(), re.MULTILINE
        )
        if not defined:
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_risk_of_both_lists_has_a_row_with_a_control_and_proof_or_says_none() -> None:
    for prefix in ("ASI", "LLM"):
        rows = _rows(prefix)
        assert sorted(rows) == [f"{prefix}{n:02d}" for n in range(1, 11)]
        for risk, row in rows.items():
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert len(cells) == 3, risk
            proved = REFERENCE.search(cells[2]) is not None
            assert proved or "No control" in cells[1], (
                f"{risk} names neither a test nor 'No control'"
            )
