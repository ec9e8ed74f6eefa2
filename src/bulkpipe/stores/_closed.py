"""The one rule of every store for writes to a job that takes no more items.

Items may be added only to a job that is neither terminal nor sealed, and job-level errors
only to a job that is not terminal; otherwise nothing is stored and :class:`JobClosed` is
raised, which ``Pipeline.submit`` takes as "stop reading this job's items".
"""

from __future__ import annotations

from ..errors import JobClosed
from ..models import JobStatus

_TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)


def refuse_closed(job_id: str, status: str, sealed: bool, *, items: bool = True) -> None:
    """Raise :class:`JobClosed` unless the job (of ``status``, a status value) takes the write:
    items (``items``) need an open, unsealed job; errors an open one."""
    if status in _TERMINAL:
        raise JobClosed(job_id, status)
    if items and sealed:
        raise JobClosed(job_id, status, sealed=True)
