"""The error types that bulkpipe itself records on item outcomes and job errors."""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    """An ``error_type`` that bulkpipe records itself (a processor's own failures are recorded
    with their exception's class name instead, e.g. ``"ValueError"``).

    Members are strings, so ``outcome.error_type == ErrorType.INVALID_RESULT`` and
    ``outcome.error_type == "InvalidResult"`` agree; the values are stored as they are and
    never change.
    """

    #: A submitted item was refused: not a mapping, no usable id, a repeated id, not storable.
    INVALID_ITEM = "InvalidItem"
    #: The processor's result cannot be stored (not JSON, not UTF-8 text, too deeply nested),
    #: or ``process_batch`` returned the wrong number of results.
    INVALID_RESULT = "InvalidResult"
    #: The batch did not finish within ``JobOptions.timeout``.
    BATCH_TIMEOUT = "BatchTimeout"
    #: The processor raised a ``BaseException`` that is not cancellation (``SystemExit``,
    #: ``KeyboardInterrupt``, ``GeneratorExit``...); not retried.
    PROCESSOR_ABORTED = "ProcessorAborted"
    #: The batch was claimed more than ``JobOptions.max_claims`` times: its workers kept dying.
    BATCH_KEPT_CRASHING = "BatchKeptCrashing"
    #: A stored item payload cannot be decoded.
    UNREADABLE_ITEM = "UnreadableItem"
    #: A stored job row cannot be read (its options do not validate, its params are not JSON).
    UNREADABLE_JOB = "UnreadableJob"
    #: A stored result cannot be decoded (the outcome stays succeeded, its result is None).
    UNREADABLE_RESULT = "UnreadableResult"
    #: Job-level: ``max_failure_ratio`` was reached.
    FAILURE_RATIO_EXCEEDED = "FailureRatioExceeded"
    #: Job-level: the processor's ``setup()`` (or loading it) failed.
    PROCESSOR_SETUP_ERROR = "ProcessorSetupError"
    #: Job-level: the iterable or source of the job's items raised.
    ITEM_SOURCE_ERROR = "ItemSourceError"
    #: Job-level: the submit was cancelled before every item was stored.
    SUBMIT_CANCELLED = "SubmitCancelled"
    #: Job-level: the submitter stopped renewing its submit lease (it died or hung) before every
    #: item was stored; the items it stored ran, then the job ended failed.
    SUBMIT_ABANDONED = "SubmitAbandoned"
