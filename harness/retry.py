"""The one place memhp waits for things.

Every wait is bounded, condition-driven and adaptive: poll quickly at first
(most conditions become true within milliseconds of the event that causes
them), back off exponentially to a ceiling, and give up at a deadline with
an error that says what was awaited and why it was not reached.  An
``abort`` callable is checked on every attempt so that a dead QEMU or a
panicked guest ends the wait at once instead of running out the clock.

Policies are factories with keyword-only arguments (after grpc's interop
``retryers.py``), built on :mod:`tenacity`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import tenacity

from harness.errors import WaitTimeout

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a condition to say "not yet, try again"."""


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def wait_for(
    condition: Callable[[], T | None],
    *,
    what: str,
    timeout: timedelta | float,
    first_interval: timedelta | float = 0.005,
    max_interval: timedelta | float = 0.25,
    abort: Callable[[], None] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
    phase: str | None = None,
    serial_tail: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns a value that is not ``None``.

    ``condition`` may also raise :class:`NotYet` or one of ``retry_on`` to ask
    for another attempt.  ``abort`` is called before every attempt and may
    raise (e.g. :class:`harness.errors.QemuExited`); that error propagates
    unchanged.  On timeout :class:`WaitTimeout` names ``what``, the deadline
    and the last failure, with the serial tail when given.
    """
    limit = _seconds(timeout)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(limit),
        wait=tenacity.wait_exponential(
            multiplier=_seconds(first_interval), min=_seconds(first_interval),
            max=_seconds(max_interval),
        ),
        retry=tenacity.retry_if_exception_type((NotYet, *retry_on)),
        reraise=False,
    )

    def attempt() -> T:
        if abort is not None:
            abort()
        value = condition()
        if value is None:
            raise NotYet(what)
        return value

    start = time.monotonic()
    try:
        return retrying(attempt)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        if isinstance(last, NotYet):
            last = None
        raise WaitTimeout(
            what,
            time.monotonic() - start,
            last_error=last,
            phase=phase,
            serial_tail=serial_tail() if serial_tail else "",
        ) from last
