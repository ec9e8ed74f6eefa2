"""The ``bulkpipe`` command line (click, with rich for progress and tables).

Thin: options, output and exit codes here; the work is done by the library. Every command is
listed by ``bulkpipe --help``; docs/cli.md is the reference.
"""

from __future__ import annotations

from .app import cli, main

__all__ = ["cli", "main"]
