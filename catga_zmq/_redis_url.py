"""The ``redis_url`` setting: checked when the settings are, without importing redis.

redis-py takes much that is no address (``redis://host/abc`` silently means database
0); a node refuses such a URL at once, with what to write instead, rather than run on a
database it was not told to use.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import SplitResult, urlsplit

from .errors import ConfigError

SCHEMES: Final = ("redis", "rediss", "unix")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")
_DB = re.compile(r"\d{1,5}")
_HOW: Final = (
    "write it as redis://HOST:PORT/DB (for example redis://127.0.0.1:6379/0), "
    "rediss:// for TLS, or unix:///PATH/redis.sock"
)


def check_redis_url(url: str) -> None:
    """Raise ``ConfigError`` (one line, the password hidden) unless ``url`` is usable."""
    shown = redact(url)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"redis_url {shown!r} has spaces or control characters; {_HOW}")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is no number or out of range
    except ValueError as exc:
        raise ConfigError(f"redis_url {shown!r} is not usable ({exc}); {_HOW}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"redis_url {shown!r}: the scheme must be redis://, rediss:// or unix://; {_HOW}"
        )
    if parts.fragment:
        raise ConfigError(f"redis_url {shown!r}: a URL of Redis has no #fragment; {_HOW}")
    _check_query(parts, shown)
    if parts.scheme == "unix":
        if not parts.path or parts.netloc:
            raise ConfigError(f"redis_url {shown!r}: a unix URL is unix:///PATH; {_HOW}")
        return
    host = parts.netloc.rpartition("@")[2]
    host = host.rsplit(":", 1)[0] if port is not None or host.endswith(":") else host
    if not host or not _HOST.fullmatch(host):
        raise ConfigError(f"redis_url {shown!r} names no usable host; {_HOW}")
    if port == 0 or (port is None and parts.netloc.rpartition("@")[2].endswith(":")):
        raise ConfigError(f"redis_url {shown!r}: the port must be 1 to 65535; {_HOW}")
    db = parts.path.removeprefix("/")
    if db and not _DB.fullmatch(db):
        raise ConfigError(
            f"redis_url {shown!r}: the path is the database number (/0, /1...), "
            f"not {parts.path!r}; {_HOW}"
        )


def _check_query(parts: SplitResult, shown: str) -> None:
    if not parts.query:
        return
    key, eq, value = parts.query.partition("=")
    if key != "db" or not eq or not _DB.fullmatch(value):
        raise ConfigError(
            f"redis_url {shown!r}: the only query taken is ?db=N (the database number); {_HOW}"
        )


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}:***@{host}{slash}{path}"
