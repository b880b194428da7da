"""Benchmarks of Bulwark against the reference Git HTTP server (nginx + fcgiwrap + git http-backend).

Not part of the test suite. Run everything with ``make bench`` (or ``.venv/bin/python -m bench``).
The modules reuse the test suite's helpers (``tests.support``: a real ``bulwark serve``, a real dev
cluster); run from the project's root, where ``tests`` is importable as a package.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
