"""A doctor check's result, its statuses, and running one check so that its crash becomes a report line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok, warn, fail (blocks) or skip (does not apply here)."""
    name: str
    status: str
    detail: str
    fix: str = ""


def blocking(checks: Iterable[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def guarded(name: str, check: Callable[..., Check | list[Check]], *args) -> list[Check]:
    """Run one check; a crash of the check itself becomes a failed line instead of ending the report."""
    try:
        result = check(*args)
    except Exception as error:
        return [Check(name, FAIL, f"the check itself crashed: {type(error).__name__}: {error}",
                      "report this with the output of nnunetv2_uc doctor --json")]
    return result if isinstance(result, list) else [result]
