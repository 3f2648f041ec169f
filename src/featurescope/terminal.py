"""Text from a corpus, a database or a model made safe for a terminal: control characters removed.

A corpus line or a label can hold ESC sequences (clear the screen, set the window title, write the
clipboard with OSC 52); rich strips BEL but not ESC. Everything the CLI prints of such text goes
through `clean`, `SafeConsole` or `dumps`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment

# C0 controls except tab and newline, DEL, the C1 controls (U+0080-U+009F: 8-bit CSI, OSC...), and the
# bidirectional overrides/isolates that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Inside JSON text, json.dumps already escapes U+0000-U+001F; these it passes through raw.
_JSON_RAW = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` without control characters (tab and newline kept)."""
    return _CONTROL.sub("", text)


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps(obj, ensure_ascii=False, **kwargs)` with every control character \\u-escaped, so the
    data is unchanged for a JSON reader and nothing reaches a terminal raw."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeConsole(Console):
    """A rich Console that removes control characters from the text it prints (its own styles stay)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            seg if seg.control else Segment(clean(seg.text), seg.style, seg.control) for seg in buffer)

