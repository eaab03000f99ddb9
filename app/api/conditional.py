"""Conditional requests: `If-Match` against a provider's version."""
from __future__ import annotations

import re

from flask import request

_STRONG_TAG = re.compile(r'^"(\d{1,18})"$')


def if_match_versions() -> str:
    """Return the versions `If-Match` accepts as a comma list; "" when any version will do.

    Weak tags never match (If-Match uses strong comparison); a header that names no version
    we could hold makes the request fail with 412.
    """
    return versions_from(request.headers.get("If-Match"))


def versions_from(header: str | None) -> str:
    """Return what `if_match_versions` returns, from the header's value (None: no header)."""
    if header is None or header.strip() == "*":
        return ""
    versions = [m.group(1) for tag in header.split(",") if (m := _STRONG_TAG.match(tag.strip()))]
    return ",".join(str(int(v)) for v in versions) or "none"
