"""pytest fixtures shared by every test area go here; shared helper functions live in tests/helpers/."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def export_cache_in_a_temporary_folder(tmp_path_factory):
    """`nnunetv2_uc predict` keeps exports in ~/.cache/nnunetv2_uc; the tests (and their subprocesses) use a
    folder of their own."""
    before = os.environ.get("NNUNETV2_UC_CACHE")
    os.environ["NNUNETV2_UC_CACHE"] = str(tmp_path_factory.mktemp("export_cache"))
    yield
    if before is None:
        os.environ.pop("NNUNETV2_UC_CACHE", None)
    else:
        os.environ["NNUNETV2_UC_CACHE"] = before
