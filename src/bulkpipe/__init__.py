"""bulkpipe: bulk item processing with bounded concurrency, retries, progress and durable stores."""

from .error_types import ErrorType
from .errors import (
    BulkpipeError,
    InvalidArgument,
    InvalidArgumentType,
    ItemSourceError,
    JobClosed,
    JobNotCancellable,
    JobNotFinished,
    JobNotFound,
    NothingToRetry,
    PermanentError,
    PipelineClosed,
    StoreError,
    SubmitLeaseLost,
    UnknownProcessor,
    UnknownSource,
    WaitTimeout,
)
from .lifecycle import JobEvents
from .models import (
    ItemOutcome,
    ItemStatus,
    Job,
    JobStatus,
    JobSummary,
    ProcessingError,
    WorkerInfo,
)
from .options import JobOptions
from .pipeline import Pipeline, Source
from .processors import BatchProcessor, ItemProcessor, ProcessorLike
from .store import JobStore, Page
from .worker import Worker

__version__ = "0.1.0.dev0"

__all__ = [
    "BatchProcessor",
    "BulkpipeError",
    "ErrorType",
    "InvalidArgument",
    "InvalidArgumentType",
    "ItemOutcome",
    "ItemProcessor",
    "ItemSourceError",
    "ItemStatus",
    "Job",
    "JobClosed",
    "JobEvents",
    "JobNotCancellable",
    "JobNotFinished",
    "JobNotFound",
    "JobOptions",
    "JobStatus",
    "JobStore",
    "JobSummary",
    "NothingToRetry",
    "Page",
    "PermanentError",
    "Pipeline",
    "PipelineClosed",
    "ProcessingError",
    "ProcessorLike",
    "Source",
    "StoreError",
    "SubmitLeaseLost",
    "UnknownProcessor",
    "UnknownSource",
    "WaitTimeout",
    "Worker",
    "WorkerInfo",
    "__version__",
]
