"""The worker's wire_version option: 2 by default, 1 for listeners older than 0.2, anything else refused by name."""

from __future__ import annotations

import pytest

from mplog.exceptions import ConfigError
from mplog.worker import WorkerOptions


def test_wire_version_defaults_to_2_and_takes_1() -> None:
    assert WorkerOptions().wire_version == 2
    assert WorkerOptions.from_kwargs(wire_version=1).wire_version == 1


@pytest.mark.parametrize("value", [0, 3, "1", True, 1.0])
def test_any_other_wire_version_is_refused_naming_the_option_and_why(value: object) -> None:
    with pytest.raises(ConfigError, match=r"wire_version must be 1 or 2, got .*older than mplog 0.2"):
        WorkerOptions.from_kwargs(wire_version=value)
