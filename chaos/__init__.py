"""A fault-injection campaign against Bulwark's three modes, with a checker of its history.

Not part of the test suite (``tests/test_chaos.py`` runs a short version of it). Run a campaign with
``make chaos`` (or ``.venv/bin/python -m chaos``); chaos/README.md says what it does and checks.
The modules reuse the test suite's helpers (a real ``bulwark serve``, a real dev cluster), so the
``tests`` directory goes on the import path here, as for the benchmarks.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
