"""Where the checkout and the reference fixtures are, seen from the tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
FIXTURE_DIRS = (FIXTURES, REPO_ROOT.parent / "shared" / "reference")


def fixture_path(name: str) -> Path:
    """A reference fixture; missing is a failure under CI (CI=true), a skip elsewhere."""
    for folder in FIXTURE_DIRS:
        if (folder / name).is_file():
            return folder / name
    message = f"reference fixture {name} not found in {[str(d) for d in FIXTURE_DIRS]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
