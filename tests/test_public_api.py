"""The public surface: what ``bulkpipe`` exports, that it is documented, typed and nothing more."""

from __future__ import annotations

import inspect
import tomllib
import types
from importlib import import_module
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import pytest

import bulkpipe
from bulkpipe import errors

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

EXPECTED = {
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
}

#: The names the issue's API sketch imports: the contract.
CONTRACT = [
    "Pipeline",
    "JobOptions",
    "JobStatus",
    "Job",
    "ItemOutcome",
    "ProcessingError",
    "BulkpipeError",
    "JobNotFound",
    "JobNotCancellable",
    "NothingToRetry",
    "PermanentError",
]


def public_objects() -> list[tuple[str, object]]:
    """The exported classes and functions (not aliases or constants)."""
    return [
        (name, getattr(bulkpipe, name))
        for name in sorted(bulkpipe.__all__)
        if inspect.isclass(getattr(bulkpipe, name)) or inspect.isfunction(getattr(bulkpipe, name))
    ]


def test_all_lists_exactly_the_expected_names() -> None:
    assert len(bulkpipe.__all__) == len(set(bulkpipe.__all__)), "a name is listed twice"
    assert set(bulkpipe.__all__) == EXPECTED


def test_the_contract_names_are_exported() -> None:
    assert set(CONTRACT) <= set(bulkpipe.__all__)


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from bulkpipe import *", namespace)  # the star import users would do
    for name in bulkpipe.__all__:
        assert getattr(bulkpipe, name) is not None
        assert name in namespace


def test_nothing_else_public_leaks_from_the_package() -> None:
    leaked = []
    for name, value in vars(bulkpipe).items():
        if name.startswith("_") or name in bulkpipe.__all__:
            continue
        if isinstance(value, types.ModuleType) and value.__name__.startswith("bulkpipe."):
            continue  # submodules are reachable as attributes once imported
        if type(value).__module__ == "__future__":
            continue  # `from __future__ import annotations` is a compiler directive
        leaked.append(name)
    assert leaked == []


def test_every_public_class_and_function_has_a_docstring() -> None:
    missing = []
    for name, obj in public_objects():
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
        if not inspect.isclass(obj) or not obj.__module__.startswith("bulkpipe"):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            target = member.fget if isinstance(member, property) else member
            if inspect.isfunction(target) and not (target.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_every_error_derives_from_bulkpipe_error_and_is_exported() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, bulkpipe.BulkpipeError)
        assert cls.__name__ in bulkpipe.__all__
        assert (cls.__doc__ or "").strip()


def test_default_messages_come_from_the_docstring() -> None:
    assert (
        str(bulkpipe.PermanentError())
        == "Raised by a processor to fail an item at once, without retries."
    )
    assert "async with" in str(bulkpipe.PipelineClosed())


def test_version_matches_the_distribution() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert bulkpipe.__version__ == project["version"] == version("bulkpipe")


def test_py_typed_ships_with_the_package() -> None:
    assert files("bulkpipe").joinpath("py.typed").is_file()
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    # The wheel takes the whole package directory, py.typed included.
    assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/bulkpipe"]
    assert "Typing :: Typed" in config["project"]["classifiers"]


def test_the_memory_store_is_public_and_satisfies_the_protocol() -> None:
    from bulkpipe.stores import MemoryStore

    assert "MemoryStore" in import_module("bulkpipe.stores").__all__
    assert isinstance(MemoryStore(), bulkpipe.JobStore)
    assert isinstance(bulkpipe.Pipeline().store, MemoryStore)  # the default store


@pytest.mark.parametrize("name", ["Pipeline", "Worker", "JobOptions", "Job", "ItemOutcome"])
def test_core_classes_live_in_bulkpipe(name: str) -> None:
    assert getattr(bulkpipe, name).__module__.startswith("bulkpipe.")


def test_error_types_keep_their_stored_strings() -> None:
    # Stored outcomes and job errors hold these strings; a renamed value would orphan them.
    assert {member.name: member.value for member in bulkpipe.ErrorType} == {
        "INVALID_ITEM": "InvalidItem",
        "INVALID_RESULT": "InvalidResult",
        "BATCH_TIMEOUT": "BatchTimeout",
        "PROCESSOR_ABORTED": "ProcessorAborted",
        "BATCH_KEPT_CRASHING": "BatchKeptCrashing",
        "UNREADABLE_ITEM": "UnreadableItem",
        "UNREADABLE_JOB": "UnreadableJob",
        "UNREADABLE_RESULT": "UnreadableResult",
        "FAILURE_RATIO_EXCEEDED": "FailureRatioExceeded",
        "PROCESSOR_SETUP_ERROR": "ProcessorSetupError",
        "ITEM_SOURCE_ERROR": "ItemSourceError",
        "SUBMIT_CANCELLED": "SubmitCancelled",
        "SUBMIT_ABANDONED": "SubmitAbandoned",
    }
    assert bulkpipe.ErrorType.INVALID_RESULT == "InvalidResult"
