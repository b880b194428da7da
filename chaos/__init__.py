"""A fault-injection campaign against Bulwark's three modes, with a checker of its history.

Not part of the test suite (``tests/test_chaos.py`` runs a short version of it). Run a campaign with
``make chaos`` (or ``.venv/bin/python -m chaos``); chaos/README.md says what it does and checks.
The modules reuse the test suite's helpers (``tests.support``: a real ``bulwark serve``, a real dev
cluster); run from the project's root, where ``tests`` is importable as a package.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
