"""One compose stack for every module of tests/stack (they share its fixed ports), and their order:
the chaos tests (test_chaos.py) run last, on what the stack tests (test_compose_stack.py) left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.stack import Stack, bring_up, engine_problem, one_stack_at_a_time

LAST = "test_chaos.py"  # kills services: everything else here runs before it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The chaos items moved right behind the last other item of this folder (pytest collects
    files by name), so the folder's items stay together and share one stack."""
    here = Path(__file__).parent
    ours = [i for i in items if i.path.parent == here]
    chaos = [i for i in ours if i.path.name == LAST]
    if not chaos or len(chaos) == len(ours):
        return
    rest = [i for i in items if i not in chaos]
    at = rest.index([i for i in ours if i not in chaos][-1]) + 1
    items[:] = [*rest[:at], *chaos, *rest[at:]]


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, report) -> Iterator[Stack]:
    """The stack, up for the whole folder. Skipped when no Docker engine answers, unless
    CATSDOGS_STACK_REQUIRED=1 (CI) makes that a failure."""
    problem = engine_problem()
    if problem and os.environ.get("CATSDOGS_STACK_REQUIRED") == "1":
        pytest.fail(f"CATSDOGS_STACK_REQUIRED=1 but no Docker engine answers: {problem}")
    if problem:
        pytest.skip(
            f"no Docker engine answers ({problem}); where no registry is reachable, "
            'eval "$(../shared/tools/docker-here.sh --standins)" starts one'
        )
    with one_stack_at_a_time():
        yield from bring_up(tmp_path_factory, report)
