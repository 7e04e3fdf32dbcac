"""CURVE keys as files, in the certificate format of pyzmq's ``zmq.auth``.

- ``generate(name, directory)`` writes ``NAME.key`` (the public certificate, to hand to
  the peers) and ``NAME.key_secret`` (the secret one, mode 0600), as
  ``python -m catga_zmq keygen NAME`` does.
- ``load_secret(path)`` reads a node's own key pair and refuses a secret file that
  others can read, as ssh refuses such a private key.

A key is Z85 text as bytes (40 bytes), the form ``zmq.curve_keypair()`` gives, the
socket options (``CURVE_SERVERKEY``...) take and ZAP passes on.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import zmq
import zmq.auth
from zmq.utils import z85

from .config import NODE_ID_PATTERN
from .errors import ConfigError

#: The suffixes of zmq.auth's (and czmq's) certificate files.
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
#: A key, Z85 encoded: 32 bytes of key in 40 characters.
KEY_LENGTH: Final = 40
#: The largest certificate file read (bytes): one is about 400; a larger file is not one.
MAX_CERT_BYTES: Final = 64 * 1024
#: Permission bits a secret file may not have: any access by group or others.
_OPEN_TO_OTHERS: Final = 0o077
_NAME = re.compile(NODE_ID_PATTERN)
_NAME_ALLOWED: Final = (
    "1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (as a node id)"
)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A node's own CURVE keys, Z85 encoded (40 bytes each)."""

    public: bytes
    secret: bytes = field(repr=False)  # never in a log line or a traceback


def valid_key(key: bytes) -> bool:
    """Whether ``key`` is a Z85-encoded CURVE key (40 characters that decode to 32 bytes)."""
    if len(key) != KEY_LENGTH:
        return False
    try:
        z85.decode(key)
    except (KeyError, ValueError, struct.error):  # a character outside Z85, or an overflow
        return False
    return True


def check_name(name: str) -> str:
    """``name`` if it is usable as a key's name (a node id's alphabet), else ``ConfigError``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name[:80]!r} is not valid: use {_NAME_ALLOWED}")
    return name


# writing -------------------------------------------------------------------------------


def generate(name: str, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new key pair as ``DIRECTORY/NAME.key`` and ``DIRECTORY/NAME.key_secret``.

    Returns (public file, secret file). The secret file has mode 0600 from the moment it
    exists. An existing file of either name is never overwritten: ``ConfigError``.
    """
    check_name(name)
    where = Path(directory).expanduser()
    if not where.is_dir():
        raise ConfigError(
            f"directory {str(where)!r} does not exist; create it first "
            f"(mkdir -p {shlex.quote(str(where))}) or give another one"
        )
    public_file = where / (name + PUBLIC_SUFFIX)
    secret_file = where / (name + SECRET_SUFFIX)
    for target in (public_file, secret_file):
        if os.path.lexists(target):
            raise _exists(target)
    try:
        # zmq.auth writes with the process's umask (often 0644) and overwrites: let it
        # write into a directory of this one's (same file system) that only this user
        # may enter (mkdtemp: mode 0700), then copy each file to its place with a mode
        # of its own and O_EXCL, which refuses a file or a link that appeared meanwhile.
        with tempfile.TemporaryDirectory(dir=where, prefix=".keygen-") as private:
            made_public, made_secret = zmq.auth.create_certificates(private, name)
            _place(Path(made_public), public_file, 0o644)
            try:
                _place(Path(made_secret), secret_file, 0o600)
            except BaseException:
                public_file.unlink(missing_ok=True)  # no half pair left behind
                raise
    except FileExistsError as exc:
        raise _exists(Path(exc.filename or secret_file)) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write keys in {str(where)!r}: {exc.strerror or exc}; "
            "choose a directory you may write to (--dir)"
        ) from None
    return public_file, secret_file


def _place(source: Path, target: Path, mode: int) -> None:
    data = source.read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _exists(path: Path) -> ConfigError:
    return ConfigError(
        f"{str(path)!r} exists; keys are never overwritten: remove it first or choose another NAME"
    )


# reading -------------------------------------------------------------------------------


class _BadCertificate(Exception):
    """A file that is no usable certificate; the text says why, for one line."""


def _read_certificate(path: Path, st: os.stat_result) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of the certificate at ``path``, or ``_BadCertificate``."""
    if not stat.S_ISREG(st.st_mode):
        raise _BadCertificate("is not a file")
    if st.st_size > MAX_CERT_BYTES:
        raise _BadCertificate(f"is {st.st_size} bytes, too large for a key certificate")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:  # zmq.auth: no "public-key = ..." line
        raise _BadCertificate("has no public key: it is not a zmq.auth certificate") from None
    except OSError as exc:
        raise _BadCertificate(f"cannot be read: {exc.strerror or exc}") from None
    if not valid_key(public):
        raise _BadCertificate("has a malformed public key (not 40 characters of Z85)")
    if secret is not None and not valid_key(secret):
        raise _BadCertificate("has a malformed secret key (not 40 characters of Z85)")
    return public, secret


def load_secret(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in the secret certificate at ``path``, or ``ConfigError``.

    Refused: a missing file, malformed content, a public certificate (no secret key), a
    file that group or others may read or write (on POSIX), or a public key that does
    not belong to the secret key.
    """
    where = Path(path).expanduser()
    shown = repr(str(where))
    hint = "python -m catga_zmq keygen NAME writes a key pair"
    try:
        st = where.stat()
    except FileNotFoundError:
        raise ConfigError(f"secret key file {shown} does not exist; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"secret key file {shown} cannot be read: {exc.strerror}") from None
    # The content first: a public certificate given by mistake is named as that, not
    # as a file to chmod.
    try:
        public, secret = _read_certificate(where, st)
    except _BadCertificate as exc:
        raise ConfigError(f"secret key file {shown} {exc}; {hint}") from None
    if secret is None:
        raise ConfigError(
            f"secret key file {shown} has no secret key (a public certificate?); give the "
            f"NAME{SECRET_SUFFIX} file that keygen wrote"
        )
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & _OPEN_TO_OTHERS:
        what = "readable by others" if mode & 0o044 else "open to others"
        raise ConfigError(
            f"secret key file {shown} is {what} (mode {mode:04o}); "
            f"chmod 600 {shlex.quote(str(where))}"
        )
    if zmq.curve_public(secret) != public:
        raise ConfigError(
            f"secret key file {shown}: its public key is not the secret key's; the file "
            f"was edited or mixed up: {hint}"
        )
    return KeyPair(public=public, secret=secret)
