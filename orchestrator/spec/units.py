"""Units a spec writes in: sizes ("2g", "512m") and durations ("30m", "90s"), and the largest
whole number reprun stores."""
from __future__ import annotations

import math
import re

MAX_INT = 2**63 - 1                 # what SQLite and JSON consumers can store without loss
SIZE_PATTERN = r"^(?=.*[1-9])[0-9]+[kmgtKMGT]?$"
DURATION_PATTERN = r"^(?=.*[1-9])[0-9]+(\.[0-9]+)?[smhd]?$"

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str | int) -> int:
    """Bytes from "2g", "512m", "1024k" (binary units) or an int; ValueError unless positive."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size {text} must be positive")
        return text
    if not isinstance(text, str) or not re.fullmatch(SIZE_PATTERN, text):
        raise ValueError(f"size {text!r} is not a positive size such as 2g, 512m or 1024k")
    unit = text[-1].lower() if text[-1].isalpha() else ""
    return int(text.rstrip("kmgtKMGT")) * _SIZE_UNITS[unit]


def parse_duration(text: str | int | float) -> float:
    """Seconds from "30m", "90s", "2h", "1d" or a number of seconds; ValueError unless positive."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not (math.isfinite(text) and text > 0):
            raise ValueError(f"duration {text} must be a positive number of seconds")
        return float(text)
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"duration {text!r} is not a positive duration such as 90s, 30m or 2h")
    unit = text[-1] if text[-1].isalpha() else ""
    return float(text.rstrip("smhd")) * _DURATION_UNITS[unit]

