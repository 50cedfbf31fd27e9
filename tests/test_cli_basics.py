"""The ``dots`` entry point itself."""

from __future__ import annotations

import importlib.metadata
import subprocess

from tests.servers import DOTS


def test_version():
    r = subprocess.run([*DOTS, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert r.stdout.strip() == f"dots {importlib.metadata.version('dots-agent')}"
