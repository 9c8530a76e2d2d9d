"""`make install` picks the torch/torchvision pair's index from TORCH_INDEX_URL and changes nothing else; `make dev`
installs the project editable, `make test` non-editable."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers.paths import REPO_ROOT


def make_dry_run(*variables: str, target: str = "install-test") -> list[str]:
    if shutil.which("make") is None or not (REPO_ROOT / "Makefile").is_file():
        pytest.skip("needs make and the checkout's Makefile")
    proc = subprocess.run(["make", "-C", str(REPO_ROOT), "-n", target, "VENV=/nonexistent/venv", *variables],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [line.split(" -m pip ", 1)[1] for line in proc.stdout.splitlines() if " -m pip install" in line]


def test_default_install_takes_the_pinned_pair_from_pypi():
    lines = make_dry_run()
    assert lines[1].split() == "install -c requirements-pins.txt -r requirements-pins.txt".split()
    assert not any("--index-url" in line for line in lines)


def test_torch_index_url_applies_to_the_torch_pair_only():
    url = "https://download.pytorch.org/whl/cu126"
    default, chosen = make_dry_run(), make_dry_run(f"TORCH_INDEX_URL={url}")
    assert chosen[1].split() == f"install -c requirements-pins.txt -r requirements-pins.txt --index-url {url}".split()
    assert [line for line in chosen if url not in line] == [line for i, line in enumerate(default) if i != 1]


def test_dev_installs_the_same_pair_then_the_project_editable_and_test_installs_what_ships():
    dev, test = make_dry_run(target="dev"), make_dry_run(target="install-test")
    assert dev[:2] == test[:2]  # pip itself, then the pinned torch/torchvision pair
    assert dev[2:] == ['install -c requirements-pins.txt -e ".[test]"']
    assert not any(" -e " in line for line in test) and "--force-reinstall --no-deps ." in test[2]
