"""One exception root for the whole project.

Every failure a user can cause or meet carries an HTTP status, so the CLI, the pipeline and the
model server report it the same way: a client's mistake is a 4xx naming the problem, never a 500.
"""

from __future__ import annotations

from collections.abc import Sequence


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose."""

    status_code: int = 500
    exit_code: int = 1  # the CLI's exit status for it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelyardError):
    """A request or argument is malformed."""

    status_code = 400


class SpecError(ModelyardError):
    """The model spec (YAML) does not validate; the message names each bad field."""

    status_code = 422


class DataValidationError(ModelyardError):
    """The data does not fit the spec. Carries every problem found, not just the first."""

    status_code = 422

    def __init__(self, problems: Sequence[str], *, source: str = "data") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source} failed validation with {len(self.problems)} problem(s):\n{lines}")


class NotFound(ModelyardError):
    """A model, version, dataset or object does not exist."""

    status_code = 404


class Conflict(ModelyardError):
    """The request contradicts the current state (e.g. promoting an archived version twice)."""

    status_code = 409


class TooLarge(ModelyardError):
    """A request is larger than a configured limit; the message names the limit and its setting."""

    status_code = 413


class RequestTimeout(ModelyardError):
    """A client took longer than a configured limit to send its request."""

    status_code = 408


class ClientGone(ModelyardError):
    """The client disconnected before its request was complete: nobody is left to answer.

    Counted with nginx's non-standard 499 ("client closed request"), so that it is told from a fault of
    the server in the metrics and the log."""

    status_code = 499


class BundleIntegrityError(ModelyardError):
    """A bundle file is missing, or its sha256 does not match metadata.json."""

    status_code = 500

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file


class StorageError(ModelyardError):
    """The object store failed or refused an operation."""

    status_code = 502


class NotReady(ModelyardError):
    """The model is not loaded (yet), or failed to load."""

    status_code = 503


class Busy(ModelyardError):
    """As many requests of one kind run as the service allows: the message names the limit; try again."""

    status_code = 503


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def database_reason(error: BaseException) -> str:
    """Why a database call failed, in one line: the driver's own message when SQLAlchemy wrapped one."""
    cause = getattr(error, "orig", None)
    return first_line(cause if cause is not None else error)
