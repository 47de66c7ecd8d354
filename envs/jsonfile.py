"""Reading the JSON files a user hands over or a run leaves behind (suites, ``config.json``,
``rims eval --json`` output), where a file that is not JSON text at all (a PNG given for it, a
half-written file) must be told apart as plainly as one that does not parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class NotJson(ValueError):
    """A file whose bytes are not JSON text: not UTF-8, or not JSON; the decoder's message."""


def read_json(path: str | Path) -> Any:
    """The JSON value in the file at ``path``. ``OSError`` where it cannot be read (missing, a
    folder, no permission); ``NotJson`` where its bytes are not JSON text."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotJson(str(err)) from None
