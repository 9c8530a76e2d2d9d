"""pytest fixtures shared by every test area go here; shared helper functions live in tests/helpers/."""
import os

import pytest

# nnU-Net's worker count (nnUNet_def_n_proc, default 8) for every nnU-Net call of the suite and its subprocesses: at
# the end of each training nnU-Net spawns that many export workers, each importing torch; the final validation of two
# tiny cases took 40-43 s on 2 cores with 8 against 9 s with one (training_log timestamps, test_uc_unet_e2e.py).
# Set before any test module imports nnunetv2, so in-process calls use the same value.
os.environ.setdefault("nnUNet_def_n_proc", "1")


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
