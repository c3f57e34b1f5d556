"""What every benchmark ends with: its result written atomically as JSON (and printed)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_result(out: str | Path, result: dict[str, Any], echo: bool = True) -> int:
    """Write ``result`` to ``out`` (temp file + rename, so a killed run leaves the old file);
    print it when ``echo``. Returns 0, the script's exit status."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if echo:
        print(text, end="")
    return 0
