"""ConsoleOptions: defaults, durations, and a ConfigError naming the option."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.integrations.console.options import ConsoleOptions, options_from_env


def test_defaults_are_read_only_ten_second_samples_over_an_hour() -> None:
    options = ConsoleOptions()
    assert not options.actions_enabled and options.anonymous_read
    assert (options.sample_interval, options.history, options.samples) == (10.0, 3600.0, 360)


def test_durations_accept_strings_and_the_token_comes_from_the_environment() -> None:
    options = options_from_env(
        {"BRIDGE_CONSOLE_TOKEN": "t" * 16}, sample_interval="500ms", history="2m"
    )
    assert options.actions_enabled
    assert (options.sample_interval, options.history, options.samples) == (0.5, 120.0, 240)
    assert "t" * 16 not in repr(options)
    assert not options_from_env({"BRIDGE_CONSOLE_TOKEN": ""}).actions_enabled


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"token": "short"}, "console.token must be at least 16 characters"),
        ({"token": " " + "t" * 20}, "console.token must not hold spaces"),
        ({"token": "t" * 20 + "\n"}, "console.token must not hold spaces"),
        ({"operator": ""}, "console.operator"),
        ({"sample_interval": 0}, "console.sample_interval must be greater than zero"),
        ({"sample_interval": "soon"}, "console.sample_interval"),
        ({"history": 5, "sample_interval": 10}, "console.history must be at least"),
        ({"history": "10h", "sample_interval": "1s"}, "at most 20000 samples"),
        ({"page_size": 0}, "console.page_size must be a positive integer"),
        ({"max_batch": True}, "console.max_batch must be a positive integer"),
        ({"page_size": 500, "scan_limit": 100}, "console.scan_limit must be at least"),
    ],
)
def test_invalid_values_name_the_option(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConsoleOptions(**values)  # type: ignore[arg-type]
