"""Checking a :class:`bulkpipe.Worker`'s timing arguments (lease, poll, give-up, watchdog)."""

from __future__ import annotations

from .errors import InvalidArgument

#: The longest ``lease_timeout`` and ``poll_interval`` a worker takes, in seconds.
MAX_LEASE_TIMEOUT = 86_400.0
MAX_POLL_INTERVAL = 3_600.0


def check_timing(
    *,
    lease_timeout: float,
    poll_interval: float,
    give_up_after: float | None,
    blocked_loop_threshold: float | None,
) -> None:
    """Raise :class:`InvalidArgument` for a timing argument out of its bounds."""
    if give_up_after is not None and not give_up_after > 0:
        raise InvalidArgument(
            f"give_up_after must be a positive number of seconds (or None), not {give_up_after}"
        )
    if lease_timeout <= 0:
        raise InvalidArgument(
            f"lease_timeout must be a positive number of seconds, not {lease_timeout}; it "
            "is how long a claimed batch stays this worker's without a heartbeat"
        )
    if not lease_timeout <= MAX_LEASE_TIMEOUT:  # also refuses NaN and infinity
        raise InvalidArgument(
            f"lease_timeout must be at most {MAX_LEASE_TIMEOUT:g} s, not {lease_timeout}; "
            "a longer lease only delays taking over the batches of a dead worker"
        )
    if poll_interval <= 0:
        raise InvalidArgument(
            f"poll_interval must be a positive number of seconds, not {poll_interval}; it "
            "is how long an idle worker waits before looking for work again"
        )
    if not poll_interval <= MAX_POLL_INTERVAL:
        raise InvalidArgument(
            f"poll_interval must be at most {MAX_POLL_INTERVAL:g} s, not {poll_interval}"
        )
    if blocked_loop_threshold is not None and not blocked_loop_threshold > 0:
        raise InvalidArgument(
            f"blocked_loop_threshold must be positive or None, not {blocked_loop_threshold}; "
            "pass None to turn the event-loop watchdog off"
        )
