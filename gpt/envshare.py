"""What gptops keeps per Python environment, beside the interpreter (standard library only).

``<sys.prefix>/share/gptops/`` holds what every workspace of the environment starts from or
reads the same way: the empty Prefect and MLflow databases new workspaces copy, and the read
built-in corpus. Each file is named after what made it (library versions, a hash of the
inputs), so another version makes its own; a read-only prefix keeps nothing (each workspace
then does the work itself).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def share_dir() -> Path:
    """``share/gptops`` of this interpreter's prefix (the venv's, under scripts/setup.sh)."""
    return Path(sys.prefix) / "share" / "gptops"


def scratch_beside(path: Path, prefix: str) -> Path | None:
    """A new temporary folder in ``path``'s folder (made if needed), for building ``path``
    before it is renamed into place; None when that folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    except OSError:
        return None
