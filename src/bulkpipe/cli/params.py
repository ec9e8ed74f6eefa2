"""Shared options and parameter types: ``--store``, ``--json``, the job option flags."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import click

from ..options import JobOptions

F = TypeVar("F", bound=Callable[..., Any])

STORE_ENV: Final = "BULKPIPE_STORE"
DEFAULT_STORE: Final = "sqlite:///bulkpipe.db"

#: JobOptions fields that ``submit`` takes as flags (``batch_size`` -> ``--batch-size``).
JOB_FLAGS: Final[dict[str, type]] = {
    "batch_size": int,
    "concurrency": int,
    "item_concurrency": int,
    "max_retries": int,
    "retry_delay": float,
    "retry_delay_max": float,
    "timeout": float,
    "item_timeout": float,
    "progress_interval": float,
    "max_failure_ratio": float,
    "failure_ratio_min_outcomes": int,
    "max_claims": int,
    "id_key": str,
}


class FiniteFloat(click.ParamType[float]):
    """A finite number in ``[low, high]`` (``low`` excluded when ``open_low``)."""

    name = "number"

    def __init__(self, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
        self.low, self.high, self.open_low = low, high, open_low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse ``value`` and check its range."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        too_low = number <= self.low if self.open_low else number < self.low
        if not math.isfinite(number) or too_low or number > self.high:
            low = f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
            high = "" if math.isinf(self.high) else f" and <= {self.high:g}"
            self.fail(f"{value!r} is not a finite number {low}{high}", param, ctx)
        return number


NON_NEGATIVE = FiniteFloat(0.0)
POSITIVE = FiniteFloat(0.0, open_low=True)
PROBABILITY = FiniteFloat(0.0, 1.0)


def store_option(fn: F) -> F:
    """``--store URL`` on a command (it wins over ``bulkpipe --store`` and BULKPIPE_STORE)."""
    return click.option(
        "--store",
        "store",
        metavar="URL",
        default=None,
        help=f"Job store URL [default: ${STORE_ENV}, else {DEFAULT_STORE}].",
    )(fn)


def allow_unserved_option(fn: F) -> F:
    """``--allow-unserved``: submit although no live worker serves the processor yet."""
    return click.option(
        "--allow-unserved",
        is_flag=True,
        help="Create the job although neither this process nor any live worker serves the "
        "processor (a worker that serves it will start later); without it that is an error.",
    )(fn)


def json_option(fn: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts)."
    )(fn)


def store_url(ctx: click.Context, value: str | None) -> str:
    """The store URL: the command's ``--store``, else the group's, else the env, else default."""
    if value:
        return value
    root = ctx.find_root().params.get("store")
    return str(root) if root else os.environ.get(STORE_ENV) or DEFAULT_STORE


def job_option_flags(fn: F) -> F:
    """One flag per :data:`JOB_FLAGS` field, documented from :class:`JobOptions`."""
    for name in reversed(JOB_FLAGS):
        field = JobOptions.model_fields[name]
        text = field.description or ""
        if "default:" not in text:
            text += f"  [default: {'none' if field.default is None else field.default}]"
        fn = click.option(
            "--" + name.replace("_", "-"), name, type=JOB_FLAGS[name], default=None, help=text
        )(fn)
    return fn


def job_options(values: Mapping[str, Any]) -> JobOptions:
    """JobOptions from the flags given; a bad value raises ValidationError naming the field."""
    given = {name: values[name] for name in JOB_FLAGS if values.get(name) is not None}
    return JobOptions.model_validate(given)
