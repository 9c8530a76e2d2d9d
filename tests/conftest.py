"""Shared test helpers: fixture lookup and small deterministic settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURE_DIRS = (TESTS / "fixtures", TESTS.parent.parent / "shared" / "reference")


def fixture_path(name: str) -> Path:
    """A reference fixture; missing is a failure under CI (CI=true), a skip elsewhere."""
    for folder in FIXTURE_DIRS:
        if (folder / name).is_file():
            return folder / name
    message = f"reference fixture {name} not found in {[str(d) for d in FIXTURE_DIRS]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _run_outside_the_source_tree(tmp_path, monkeypatch):
    """Work in a temporary folder: a subprocess such as `python -m nnunetv2_uc` started in the repository root
    would import the source folder `nnunetv2_uc/` (which lacks the mapped sub-packages) instead of the install."""
    monkeypatch.chdir(tmp_path)
