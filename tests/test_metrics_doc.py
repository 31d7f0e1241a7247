"""Every exported metric family is documented in the README's `## Metrics` table.

The first column of that table names each family in backticks, in METRICS order, with the
type and labels the exporter really emits.
"""

from __future__ import annotations

import re
from pathlib import Path

from pldns.metrics import METRICS
from tests.test_metrics import make_app, scrape

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^`([a-z_:][a-z0-9_:]*)`$")


def section(text: str, heading: str) -> str:
    """The lines after `heading` up to the next `## ` heading."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def table_rows(text: str) -> list[list[str]]:
    """The cells of the first Markdown table's body rows (header and separator skipped)."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= {"-", ":"} and cells[0] != "metric":
                rows.append(cells)
        elif in_table:
            break
    return rows


def names(rows: list[list[str]]) -> list[str]:
    out = []
    for row in rows:
        match = NAME.match(row[0])
        assert match, f"first column is not a backticked metric name: {row[0]!r}"
        out.append(match.group(1))
    return out


def test_readme_table_lists_metrics_in_order_with_types_and_labels() -> None:
    rows = table_rows(section((REPO / "README.md").read_text(), "## Metrics"))
    assert names(rows) == list(METRICS)
    app = make_app()
    app.stats.requests[("udp", "A")] += 1
    app.stats.responses[("NOERROR", "owned")] += 1
    families = scrape(app)
    for row in rows:
        name, kind, labels = names([row])[0], row[1], row[2]
        assert kind == METRICS[name][0], name
        exported = {k for s in families[name].samples for k in s.labels} - {"le"}
        documented = set(re.findall(r"`([a-z_]+)`", labels))
        assert documented == exported, name


def test_readme_metrics_section_names_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Metrics" in readme.splitlines(), "README.md has no '## Metrics' section"
    documented = names(table_rows(section(readme, "## Metrics")))
    assert set(documented) == set(METRICS)
