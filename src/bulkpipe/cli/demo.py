"""``bulkpipe demo``: the 3,000-node ``full_analysis`` job with a simulated flaky upstream."""

from __future__ import annotations

import json

import click

from ..demo.run import DemoConfig, DemoReport, format_summary, job_options, run_demo
from .errors import CliInterrupted, Interrupted
from .jobs import job_exit
from .params import NON_NEGATIVE, PROBABILITY, json_option, store_option, store_url
from .render import JobProgress
from .runtime import open_cli_store, run

_DEFAULTS = DemoConfig()


@click.command()
@click.option("--nodes", type=click.IntRange(min=1), default=_DEFAULTS.nodes, show_default=True)
@click.option(
    "--latency",
    type=NON_NEGATIVE,
    default=_DEFAULTS.latency,
    show_default=True,
    help="Seconds per simulated upstream call (two per item).",
)
@click.option(
    "--failure-rate",
    type=PROBABILITY,
    default=_DEFAULTS.failure_rate,
    show_default=True,
    help="Chance that one upstream call fails (the item is retried).",
)
@click.option(
    "--seed",
    type=int,
    default=_DEFAULTS.seed,
    show_default=True,
    help="Seed of the nodes and of the failure draws.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size, show_default=True
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=_DEFAULTS.concurrency,
    show_default=True,
    help="Batches in flight.",
)
@click.option(
    "--retry-delay",
    type=NON_NEGATIVE,
    default=_DEFAULTS.retry_delay,
    show_default=True,
    help="Base backoff in seconds.",
)
@json_option
@store_option
@click.pass_context
def demo(
    ctx: click.Context,
    nodes: int,
    latency: float,
    failure_rate: float,
    seed: int,
    batch_size: int,
    concurrency: int,
    retry_delay: float,
    as_json: bool,
    store: str | None,
) -> None:
    """Run the demo job: score 3,000 synthetic nodes.

    Runs a full_analysis job (opportunity score and revenue projection per node) in this
    process on the store, shows its progress on stderr, then prints a summary and the top 10
    opportunities. Exits 0 if the job completed, 1 if not; Ctrl-C cancels the job.
    """
    config = DemoConfig(
        nodes=nodes,
        latency=latency,
        failure_rate=failure_rate,
        seed=seed,
        batch_size=batch_size,
        concurrency=concurrency,
        retry_delay=retry_delay,
    )
    job_options(config)  # a bad value fails here, naming its option
    job_store = open_cli_store(store_url(ctx, store))
    try:
        with JobProgress() as bar:
            report = run(lambda: run_demo(config, store=job_store, on_progress=bar.update))
    except Interrupted:
        raise CliInterrupted("interrupted") from None
    click.echo(_as_json(report) if as_json else format_summary(report), nl=as_json)
    ctx.exit(job_exit(report.job))


def _as_json(report: DemoReport) -> str:
    top = [
        {"node_id": item.node_id, "name": item.name, "combined_value": item.combined_value}
        for item in report.top
    ]
    return json.dumps({"job": report.job.model_dump(mode="json"), "top": top}, indent=2)
