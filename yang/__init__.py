"""The YANG modules the agent is built from.

The standard modules (RFC 9132, RFC 8783, RFC 9066) are kept verbatim as published;
``dots-agent`` is ours.  Their imports (ietf-inet-types, ...) come from pyang's bundled set.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent


def pyang_modules_dir() -> list[Path]:
    """Directories holding pyang's bundled standard modules (ietf-inet-types, ...)."""
    candidates = [Path(sys.prefix) / "share" / "yang" / "modules"]
    try:
        import pyang

        candidates.append(Path(pyang.__file__).resolve().parents[3] / "share" / "yang" / "modules")
    except Exception:  # pragma: no cover - pyang is a dependency
        pass
    dirs: list[Path] = []
    for base in candidates:
        for sub in ("ietf", "iana"):
            if (base / sub).is_dir() and base / sub not in dirs:
                dirs.append(base / sub)
    return dirs


def search_path() -> list[Path]:
    """Our modules first, then pyang's bundled standard modules."""
    return [MODULE_DIR, *pyang_modules_dir()]
