"""One exception hierarchy for the whole program.

Every error is either *transient* (the supervisor reconnects and retries with
backoff: connection lost, server restarting, deadlock, serialization failure) or
*terminal* (retrying cannot help: bad config, bad rule, wrong password, slot
missing, binlog purged).  Only the CLI turns these into messages and exit codes.
"""

from __future__ import annotations


class CdcError(Exception):
    """Base of every error cdc raises on purpose."""

    transient = False

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message} (fix: {self.fix})"
        return self.message


class TransientError(CdcError):
    """Retry after a backoff, from the last committed position."""

    transient = True


class TerminalError(CdcError):
    """Stop: a human has to change something first."""


class ConfigError(TerminalError):
    """The pipeline YAML file is wrong.  Carries the file and key."""


class RuleError(TerminalError):
    """A rule file is wrong.  Carries file and line in the message."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 fix: str | None = None) -> None:
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(where + message, fix=fix)
        self.file = file
        self.line = line


class SourceError(TerminalError):
    """The source database cannot be read as configured."""


class TargetError(TerminalError):
    """The target database cannot be written as configured."""


class ConnectionLost(TransientError):
    """A database connection broke or could not be made for a transient reason."""


class RowError(CdcError):
    """One row (or a few) could not be applied; they go to the dead-letter table."""
