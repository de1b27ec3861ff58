from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
MIRROR = Path(os.environ.get("LWPAR_MIRROR", ROOT.parent / "shared" / "datasets"))
# Tests set their mirror through params; an outer LWPAR_MIRROR (CI sets one) must not override it,
# not even in module- or session-scoped fixtures, which run before any function-scoped monkeypatch.
os.environ.pop("LWPAR_MIRROR", None)
os.environ.pop("LWPAR_WEIGHTS", None)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    # A test that sets one of them must not leak it into the next.
    monkeypatch.delenv("LWPAR_MIRROR", raising=False)
    monkeypatch.delenv("LWPAR_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    if not (MIRROR / "PETA.zip").is_file():
        pytest.skip(f"the PETA mirror is not at {MIRROR}")
    return MIRROR
