"""Credentials taken out of everything allray records or prints: run records, summaries, reports, messages.

A location may carry credentials (`s3://KEY:SECRET@bucket/x`, `...?secret_key=...`), and a command
line may hold them as options; summary.json, config-*.json, patients.json, report.html and the
terminal would otherwise keep them in plain text, where anyone who can read an output folder
(or a shared screen) sees them. The rule is Spark's `spark.redaction.regex`
(`(?i)secret|password|token|access[.]?key`), widened to `credential`, `passwd` and the other
separators: the value of any key, option or URI query parameter named like that is replaced by
REDACTED, and so is the whole user-info part of a URI (`KEY:SECRET@`), the form pyarrow reads as
access key and secret key. Only recorded and printed text is redacted: the locations allray
itself reads and writes keep their credentials.
"""

from __future__ import annotations

import re

REDACTED = "*********(redacted)"  # what Spark writes in place of a redacted value
SECRET_NAME = r"(?:secret|password|passwd|token|access[._-]?key|credential)"
_SECRET_KEY = re.compile(rf"(?i){SECRET_NAME}")

# scheme://USERINFO@host: user-info either holds a ':' (which a host never does before '@'; the secret
# part may hold an unescaped '/') or is one word with no '/', so `s3://b/x/a@b.png` is left alone.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s@/?#:'\"]*:[^\s@'\"]*|[^\s@/?#:'\"]+)@")
# ?name=value or &name=value in a URI, and name=value in a command line or message.
_PARAM = re.compile(rf"(?i)(^|[?&;\s'\"])([\w.-]*{SECRET_NAME}[\w.-]*)=([^&#\s'\"]*)")
# --secret-key VALUE (an option and its value as separate words of a command line).
_OPTION = re.compile(rf"(?i)(^|\s)(--?[\w.-]*{SECRET_NAME}[\w.-]*)(\s+)(?!-)([^\s'\"]+)")


def is_secret_name(name: str) -> bool:
    """True for a key or option named like a credential (secret_key, password, session_token, ...)."""
    return bool(_SECRET_KEY.search(name))


def redact_text(text: str) -> str:
    """`text` (a location, a command line, a message) with every credential in it replaced by REDACTED."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}", text)
    return _OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{REDACTED}", text)


def redact(value):
    """A JSON-like value (dicts, lists, strings, numbers) with credentials redacted: every string passes
    through `redact_text`, and the value of a key named like a credential is REDACTED whole."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and is_secret_name(k) and v not in (None, "")
                    else redact(v)) for k, v in value.items()}  # fmt: skip
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
