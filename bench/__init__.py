"""Benchmarks of Bulwark against the reference Git HTTP server (nginx + fcgiwrap + git http-backend).

Not part of the test suite. Run everything with ``make bench`` (or ``.venv/bin/python -m bench``).
The modules reuse the test suite's helpers (a real ``bulwark serve``, a real dev cluster), so the
``tests`` directory goes on the import path here.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
