"""Text reprun prints, made safe for the reader's terminal.

Names, messages and facts that reach a terminal often come from the job (metric and artifact
names, its log's tail, the OS facts its image reports) or from the files it left (a symlink's
target). An escape sequence in them would recolour, retitle or rewrite the terminal (OSC 52
even writes the clipboard), and a bidi override reverses what follows it on screen. Each such
character is shown as its escape instead: \\x1b, \\u202e. A lone surrogate (a name that was never
valid UTF-8) is shown as \\udXXX rather than crash the write.

The job's own live output is not passed through here: like `docker logs`, reprun shows it as
the job printed it.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls; bidi embeddings, overrides and isolates;
# lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every character that could act on a terminal shown as its escape."""
    return _UNSAFE.sub(_escape, text)
