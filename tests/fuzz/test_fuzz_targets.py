"""A bounded run of every fuzz target (``python -m fuzz --minutes N`` runs them for longer)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from fuzz.targets import TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_finds_nothing(name: str) -> None:
    strategy, check = TARGETS[name]

    @given(strategy)
    def run(value: Any) -> None:
        check(value)

    run()


def test_fuzz_command_runs_and_counts_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    from fuzz.__main__ import main

    assert main(["--minutes", "0.02", "--target", "messages", "--slice", "20"]) == 0
    out = capsys.readouterr().out
    assert "no crash or hang" in out
