"""README.md cannot drift from the code: every repository path it quotes exists (a `file.py::test` reference names a
test of that file), and every `nnunetv2_uc` subcommand and flag it quotes is one the CLI accepts."""
from __future__ import annotations

import argparse
import re

import pytest

from helpers.paths import REPO_ROOT
from nnunetv2_uc.cli import SUBCOMMANDS, build_parser

README = (REPO_ROOT / "README.md").read_text()
TOP_FOLDERS = ("architectures", "trainers", "plans_overrides", "scripts", "tests", "nnunetv2_uc", "docs", r"\.ci")
PATH = re.compile(r"(?<![\w/$.-])((?:" + "|".join(TOP_FOLDERS) + r")/[\w./-]*[\w/](?:::\w+)?)")
COMMAND = re.compile(r"nnunetv2_uc ([a-z][a-z-]*)([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def quoted_paths() -> list[str]:
    """Repository paths in the README (placeholders such as tests/AREA left out)."""
    return sorted({p for p in PATH.findall(README) if not re.search(r"/[A-Z]+(/|$)", p)})


def quoted_commands() -> list[tuple[str, str]]:
    """(subcommand, the rest of its line) for every `nnunetv2_uc SUBCOMMAND ...` in the README, continuation lines
    joined and shell comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", README)
    return [(sub, rest.split(" #")[0]) for sub, rest in COMMAND.findall(joined)]


def _parser_of(sub: str, rest: str) -> argparse.ArgumentParser:
    """The subcommand's parser; for subcommands with their own choices (convert DATASET), that choice's parser."""
    parser = build_parser(sub)
    subparser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[sub]
    nested = next((a for a in subparser._actions if isinstance(a, argparse._SubParsersAction)), None)
    words = rest.split()
    if nested is None:
        return subparser
    # `convert flare2021 ...`, or a placeholder (`convert DATASET ...`): the options every dataset shares
    return nested.choices[words[0] if words and words[0] in nested.choices else next(iter(nested.choices))]


def test_the_readme_quotes_paths_and_commands():
    assert len(quoted_paths()) > 40 and len(quoted_commands()) > 40  # the patterns still find what they should


@pytest.mark.parametrize("path", quoted_paths())
def test_quoted_path_exists(path):
    file, _, test = path.partition("::")
    assert (REPO_ROOT / file).exists(), f"README.md quotes {file}, which does not exist"
    if test:
        assert f"def {test}(" in (REPO_ROOT / file).read_text(), f"README.md quotes {path}: no such test"


def test_quoted_subcommands_and_flags_exist():
    problems = []
    for sub, rest in quoted_commands():
        if sub not in SUBCOMMANDS:
            problems.append(f"nnunetv2_uc {sub}: no such subcommand")
            continue
        known = set(_parser_of(sub, rest)._option_string_actions)
        problems += [f"nnunetv2_uc {sub} {flag}: no such flag ({rest.strip()[:60]})"
                     for flag in FLAG.findall(rest.replace("|", " ")) if flag not in known]
    assert problems == []
