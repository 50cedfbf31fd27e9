"""Statement-by-statement conformance: requirements tables joined with test outcomes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SPEC_DIRS = [Path(__file__).resolve().parents[2] / "shared" / "spec", Path(__file__).resolve().parent / "data" / "spec"]
FILES = ("requirements-rfc9132.md", "requirements-rfc9066.md")
# Statements that do not apply to this implementation, with the reason (reported as "n/a").
NOT_APPLICABLE = {
    "SC-006": "translator addresses are operator input: the client signals what it is given",
    "SC-007": "rule for future extensions using keys 128-255; none defined here",
    "SC-025": "no DOTS data channel: no aliases or filters to reinstall",
    "SC-027": "cuid is bound to the client certificate (4.03 on mismatch): no cuid collision 4.09",
    "SC-028": "client-domain DOTS gateway rule; no gateway implemented",
    "SC-052": "server-domain DOTS gateway rule; no gateway implemented",
    "SC-053": "cdid from trusted gateways; no gateway implemented (client cdids are ignored: SC-055)",
    "SC-056": "server-domain DOTS gateway rule; no gateway implemented",
    "SC-112": "'MUST NOT be relayed by a DOTS gateway'; no gateway implemented",
    "SC-140": "'MUST NOT be relayed by a DOTS gateway'; no gateway implemented",
    "CH-022": "CGN-aware Call Home client (RFC 8512/8513 lookups) not implemented; mapping is on the CPE",
}
_ROW = re.compile(r"^\|\s*((?:SC|CH)-\d+)\s*\|\s*([^|]*)\|\s*([A-Z ]+?)\s*\|\s*(.*)\|\s*$")


@dataclass(frozen=True)
class Requirement:
    rid: str
    section: str
    level: str
    text: str


def load_requirements() -> list[Requirement]:
    """Parse the numbered statements (SC-nnn, CH-nnn) from the requirements tables."""
    out: list[Requirement] = []
    for name in FILES:
        path = next((d / name for d in SPEC_DIRS if (d / name).exists()), None)
        if path is None:
            continue
        for line in path.read_text().splitlines():
            m = _ROW.match(line)
            if m:
                out.append(Requirement(m.group(1), m.group(2).strip(), m.group(3).strip(), m.group(4).strip()))
    return out


def render_report(reqs: list[Requirement], results: dict[str, list[tuple[str, str]]]) -> str:
    lines = ["# Conformance report", "",
             "| id | level | section | tests | verdict |", "|---|---|---|---|---|"]
    counts: dict[str, dict[str, int]] = {}
    for r in reqs:
        runs = results.get(r.rid, [])
        if not runs and r.rid in NOT_APPLICABLE:
            verdict = "n/a"
        elif not runs:
            verdict = "not covered"
        elif all(o == "passed" for _n, o in runs):
            verdict = "pass"
        elif any(o == "failed" for _n, o in runs):
            verdict = "FAIL"
        else:
            verdict = "skipped"
        c = counts.setdefault(r.level, {})
        c[verdict] = c.get(verdict, 0) + 1
        note = f" ({NOT_APPLICABLE[r.rid]})" if verdict == "n/a" else ""
        lines.append(f"| {r.rid} | {r.level} | {r.section} | {len(runs)} | {verdict}{note} |")
    kinds = ("pass", "FAIL", "skipped", "n/a", "not covered")
    summary = ["", "## Summary", "", "| level | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for level, c in sorted(counts.items()):
        summary.append(f"| {level} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    return "\n".join(lines[:2] + summary[1:] + [""] + lines[2:]) + "\n"
