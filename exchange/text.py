"""Text that may be shown to people: which characters a stored or logged string refuses.

C0 and C1 controls and DEL (a newline forges a log line or splits a CSV cell), the line
and paragraph separators, and the bidi controls (which make text display as something
else, "Trojan Source", CVE-2021-42574).
"""

from __future__ import annotations

import re

__all__ = ["UNPRINTABLE", "UNPRINTABLE_CLASS"]

UNPRINTABLE_CLASS = (
    "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069"
)
UNPRINTABLE = re.compile(f"[{UNPRINTABLE_CLASS}]")
