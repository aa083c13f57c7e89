"""Characters that have no place in an identifier or a log line: C0 and C1 control characters (NUL,
newlines, ANSI escapes among them), DEL, and the Unicode bidirectional marks, overrides and isolates.
They can forge a log line, rewrite a terminal, or make an id look like another one."""
from __future__ import annotations

import re

UNPRINTABLE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]")


# An id that is a segment of a URL path (a subscription id, a cohort id) cannot hold a "/": the router
# would split it (`%2F` too: the server decodes it first), so the record could be stored but never read.
SLASH_REFUSED = "contains '/', which an id shown in a URL path cannot hold"
# Nor be "." or "..": browsers, curl and proxies resolve such a segment away before the request is sent.
DOT_SEGMENT_REFUSED = "is '.' or '..', which a URL path resolves away"


def path_segment_problem(value: str) -> str | None:
    """Why `value` cannot be an id shown as a segment of a URL path (SLASH_REFUSED, DOT_SEGMENT_REFUSED),
    or None when it can."""
    if "/" in value:
        return SLASH_REFUSED
    if value in (".", ".."):
        return DOT_SEGMENT_REFUSED
    return None


def escape_unprintable(value: str) -> str:
    """`value` with each character above written as a Python escape (`\\x1b`, `\\u202e`), so that it
    prints on one line and as it reads."""
    return UNPRINTABLE.sub(_escaped, value)


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def has_unprintable(value: str) -> bool:
    """Whether `value` holds one of the characters above."""
    return UNPRINTABLE.search(value) is not None
