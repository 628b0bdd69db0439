"""Credentials never printed: ``redact`` masks the password of every URL in a text.

``postgresql://user:pass@host/db`` -> ``postgresql://user:***@host/db``. Used on every message,
record and report line that can hold a storage URL (errors, results.json, report.md, the command).
"""

from __future__ import annotations

import re

__all__ = ["redact"]

# scheme://user:password@ ; the password runs to the last "@" of the whitespace-delimited word, so that an
# unescaped "@" or "/" in it is masked too (masking too much is safe, too little is not)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<password>\S*)@(?=[^\s@]*(?:\s|$))")


def redact(text: str) -> str:
    """``text`` with every URL password replaced by ``***`` (URLs without a password are unchanged)."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)
