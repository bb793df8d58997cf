"""User-facing errors: each names the input at fault and what to do about it.

The CLI prints ``GptopsError`` messages as one line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

#: When set, a CLI input error's message is also written to this file, so a parent process
#: (DVC running a stage for the pipeline) can surface the one-line message.
ERROR_FILE_ENV = "GPTOPS_ERROR_FILE"


class GptopsError(Exception):
    """An error caused by the user's input or environment, with a fix in its message."""


class ConfigError(GptopsError):
    """Unknown profile or parameter, invalid value, missing params file."""


class DataError(GptopsError):
    """Missing/empty corpus, unreadable shard, no usable documents."""


class CheckpointError(GptopsError):
    """Missing or corrupt checkpoint."""


class RegistryError(GptopsError):
    """Unknown model or alias, missing artifact, non-finite metric."""


class TrainingError(GptopsError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


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
