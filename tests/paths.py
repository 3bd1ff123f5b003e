"""Where the tests find the repository and the read-only data beside it (``../shared``, optional)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
