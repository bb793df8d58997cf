"""User-facing errors: each names the input at fault and what to do about it.

The CLI prints ``GptopsError`` messages as one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

#: When set, a CLI input error's message is also written to this file, so a parent process
#: (DVC running a stage for the pipeline) can surface the one-line message.
ERROR_FILE_ENV = "GPTOPS_ERROR_FILE"


class GptopsError(Exception):
    """An error caused by the user's input or environment, with a fix in its message."""


class ConfigError(GptopsError):
    """Unknown profile or parameter, invalid value, missing params file."""


class DataError(GptopsError):
    """Missing/empty corpus, unreadable shard, no usable documents."""


class NoSpaceError(DataError):
    """A write failed because its file system is full: names the folder, its space and the fix."""

    def __init__(self, path: Path | str, fix: str) -> None:
        self.path = Path(path).absolute()
        super().__init__(f"no space left on {self.path} ({_space(self.path)}); {fix}")


#: The errnos of a full file system (ENOSPC) and of a used-up disk quota (EDQUOT).
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def no_space(exc: BaseException | None) -> OSError | None:
    """The "no space left" ``OSError`` that is ``exc`` or caused it, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _space(path: Path) -> str:
    """``0.1 MB free of 21 MB`` on the file system holding ``path`` (or its nearest parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.0f} MB"


class CheckpointError(GptopsError):
    """Missing or corrupt checkpoint."""


class RegistryError(GptopsError):
    """Unknown model or alias, missing artifact, non-finite metric."""


class TrainingError(GptopsError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


class StoppedEarly(Exception):  # noqa: N818 - a request, not an error
    """A training callback ended the step early on purpose (a pruned tuning trial). Not an
    error: the step's MLflow run ends KILLED, tagged with this message."""


class RankFailed(RuntimeError):
    """A training process died (signal, crash). Not an input error: a retry resumes from the
    last checkpoint, so the pipeline's training tasks retry it."""


class Interrupted(BaseException):
    """Training was asked to stop (SIGTERM, SIGINT): a checkpoint was saved, then this is
    raised. A BaseException, like KeyboardInterrupt: nothing should catch it as an error. The
    CLI exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
