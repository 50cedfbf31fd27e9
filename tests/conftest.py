"""Shared pytest wiring: the conformance report.

Every test names the RFC statements it checks with ``@pytest.mark.req("SC-nnn", "CH-nnn")``.
``pytest --conformance-report FILE`` writes, per statement of ``requirements-rfc9132.md`` and
``requirements-rfc9066.md``, the tests that check it and whether they passed (Markdown);
``scripts/conformance.py`` prints the same from a previous run's JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import load_requirements, render_report

_results: dict[str, list[tuple[str, str]]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--conformance-report", metavar="FILE", default=None,
                     help="write a per-statement conformance report (Markdown; FILE.json alongside)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" and not (report.when == "setup" and report.skipped):
        return
    for mark in item.iter_markers("req"):
        for rid in mark.args:
            _results.setdefault(str(rid), []).append((item.nodeid, report.outcome))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = session.config.getoption("--conformance-report")
    if not target:
        return
    path = Path(target)
    path.write_text(render_report(load_requirements(), _results))
    path.with_suffix(".json").write_text(json.dumps(_results, indent=1, sort_keys=True))
