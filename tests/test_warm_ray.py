"""How a simulation starts Ray: a start that hits Ray's fixed 30 s raylet wait is tried again."""

from __future__ import annotations

import logging

import pytest

from fedvtc.warm_ray import RAY_START_ATTEMPTS, start_patiently

# The message Ray 2.55 raises (ray/_private/node.py) when a new node's raylet does not register in time.
TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the raylet "
                    "failed to startup or the GCS has become overloaded.")


def _starter(failures: list[Exception]):
    calls = {"start": 0, "clean_up": 0}

    def start() -> str:
        calls["start"] += 1
        if failures:
            raise failures.pop(0)
        return "started"

    def clean_up() -> None:
        calls["clean_up"] += 1

    return start, clean_up, calls


def test_a_start_that_timed_out_is_cleaned_up_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    start, clean_up, calls = _starter([TIMEOUT, TIMEOUT])
    with caplog.at_level(logging.WARNING, logger="fedvtc"):
        assert start_patiently(start, clean_up, attempts=3) == "started"
    assert calls == {"start": 3, "clean_up": 2}
    assert "try 1 of 3" in caplog.text and "try 2 of 3" in caplog.text


def test_the_last_timeout_and_any_other_error_are_raised_at_once() -> None:
    start, clean_up, calls = _starter([TIMEOUT] * RAY_START_ATTEMPTS)
    with pytest.raises(Exception, match="timed out during startup"):
        start_patiently(start, clean_up)
    assert calls == {"start": RAY_START_ATTEMPTS, "clean_up": RAY_START_ATTEMPTS - 1}

    start, clean_up, calls = _starter([ConnectionError("no Ray cluster at 127.0.0.1:6379")])
    with pytest.raises(ConnectionError):
        start_patiently(start, clean_up)
    assert calls == {"start": 1, "clean_up": 0}
