"""Typed errors raised by the library. Only `farm.cli` turns them into messages and exit codes."""

from __future__ import annotations


class FarmError(Exception):
    """Base class of every error the farm raises on purpose."""


class SpecError(FarmError, ValueError):
    """Bad benchmark input: names the field and what is allowed. Nothing is run or queued."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DeviceUnavailableError(SpecError):
    """The job asks for a device this machine does not have (for example `cuda` without CUDA)."""


class MemoryPredictionError(SpecError):
    """The job is predicted not to fit in the device's memory; refused before it runs."""

    def __init__(self, field: str, message: str, predicted_bytes: int, available_bytes: int) -> None:
        self.predicted_bytes = predicted_bytes
        self.available_bytes = available_bytes
        super().__init__(field, message)


class CheckpointError(FarmError):
    """A local checkpoint directory is missing files or does not match the model."""


class BrokerError(FarmError):
    """Redis (broker or result store) cannot be reached or refused the farm."""


class BrokerUnavailable(BrokerError):
    """Redis cannot be reached now (connection refused, reset or timed out); it may come back."""


class NotFoundError(FarmError):
    """A run, job, result or schedule that was asked for does not exist."""


class ConfigError(FarmError):
    """A deployment setting (FARM_* environment) is invalid or inconsistent."""


class JobTimeout(FarmError):
    """A job ran past its time limit; it is stored as `timeout`."""


class EmptySelectionWarning(UserWarning):
    """A `farm.api` selection (runs, machines, devices, models) that matched no stored result: warned,
    so that a notebook never mistakes a typo for a run that measured nothing."""


class OwnershipError(FarmError):
    """The embedded farm cannot prove that a process is its own: another process holds its data
    directory's lock, or a recorded pid runs the farm's command line but not the recorded start. The
    message names the pid; nothing was started or stopped."""
