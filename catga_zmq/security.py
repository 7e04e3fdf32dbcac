"""CURVE keys as files, in the certificate format of pyzmq's ``zmq.auth``.

- ``generate(name, directory)`` writes ``NAME.key`` (the public certificate, to hand to
  the peers) and ``NAME.key_secret`` (the secret one, mode 0600), as
  ``python -m catga_zmq keygen NAME`` does.
- ``load_secret(path)`` reads a node's own key pair and refuses a secret file that
  others can read, as ssh refuses such a private key.
- Whom to trust (``Trust``): ``TrustStore(directory)``, the public certificates of a
  directory, each named after its node (those under its ``admin/`` are admin keys too);
  or ``FirstKeySeen``, any key, the first one a node id presents bound to it.
- Who may send admin requests (``AdminCheck``): admin keys with a trust directory,
  else the ``plaintext_admin`` setting.
- ``load(options)``: what the ``curve_*`` settings ask for, files read (None: plaintext);
  ``plaintext_warning(bind)``: the WARNING a plaintext node logs off loopback.

A key is Z85 text as bytes (40 bytes): the form ``zmq.curve_keypair()`` gives and the
socket options (``CURVE_SERVERKEY``...) take. A ZAP request carries the client's key as
its 32 raw bytes: ``zmq.utils.z85.encode`` them before asking a ``Trust``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import zmq
import zmq.auth
from zmq.utils import z85

from .config import NODE_ID_PATTERN, NodeOptions, curve_mode
from .errors import ConfigError, PermissionDenied

#: The suffixes of zmq.auth's (and czmq's) certificate files.
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
#: A key, Z85 encoded: 32 bytes of key in 40 characters.
KEY_LENGTH: Final = 40
#: The largest certificate file read (bytes): one is about 400; a larger file is not one.
MAX_CERT_BYTES: Final = 64 * 1024
#: Permission bits a secret file may not have: any access by group or others.
_OPEN_TO_OTHERS: Final = 0o077
#: How often a node should ask a TrustStore whether it ``changed()`` (s): a key removed
#: from the directory is refused within this (and one reload) of its removal.
RELOAD_INTERVAL: Final = 2.0  # s
#: Node ids FirstKeySeen binds at most when not told (a node tells it its max_peers:
#: only members are bound); past it a new id is refused (fail closed).
MAX_BINDINGS: Final = 16_384
#: The subdirectory of a trust directory whose certificates are admin keys: trusted as
#: the others are, and allowed the admin requests (drain, set) too.
ADMIN_DIR: Final = "admin"

log = logging.getLogger("catga_zmq.security")

#: A key's name: a node id (the trust directory names each node's key after it).
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


# whom to trust -----------------------------------------------------------------------------


class Trust(Protocol):
    """A trust policy: which keys may connect, and which node id each may speak for."""

    def allows(self, key: bytes) -> bool:
        """Whether a peer presenting ``key`` may connect at all."""
        ...

    def identity_ok(self, node_id: str, key: bytes) -> bool:
        """Whether a frame from ``key`` may claim to come from ``node_id``."""
        ...

    def bind(self, node_id: str, key: bytes) -> bool:
        """``identity_ok``, for a node heard first-hand (its heartbeat): a policy that
        binds ids to keys on first sight binds ``node_id`` to ``key`` now."""
        ...

    def key_of(self, name: str) -> bytes | None:
        """The key of node ``name``, as far as this policy knows it."""
        ...

    def is_admin(self, key: bytes) -> bool:
        """Whether ``key`` may send admin requests (drain, set)."""
        ...


@dataclass(frozen=True, slots=True)
class TrustChange:
    """What a ``TrustStore.reload()`` changed, by node name."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    rekeyed: frozenset[str] = frozenset()  # the same name, another key
    admins_added: frozenset[str] = frozenset()  # names whose key is an admin key now
    admins_removed: frozenset[str] = frozenset()  # ...and no longer

    def __bool__(self) -> bool:
        return bool(
            self.added or self.removed or self.rekeyed or self.admins_added or self.admins_removed
        )


#: What changed() compares: the directory's own stat, and each certificate's.
_FileStamp = tuple[str, int, int, int, int]  # name, inode, size, mtime_ns, ctime_ns
_Snapshot = tuple[int, int, frozenset[_FileStamp]]  # inode, mtime_ns, certificates
#: The snapshot of a directory that cannot be read.
_GONE: Final[_Snapshot] = (-1, -1, frozenset())


class TrustStore:
    """The public certificates (``*.key``) of a directory: the nodes this node trusts.

    A node's name is its file's stem: ``shop-1.key`` holds the key of node ``shop-1``
    (the file keygen writes for that name). A file that is no usable certificate, or
    whose stem is no node id, or whose key another name already has (names are taken in
    sorted order), is skipped with one WARNING naming it; it is warned about again
    only once it changes. Files whose name starts with a dot are ignored, as by a shell's
    ``*.key``.

    Admin keys: the certificates in the subdirectory ``admin/`` (``admin/ops.key``,
    named the same way) are trusted like the others and may also send the admin
    requests (``Drain``, ``Configure``). A name in both places must hold one key in
    both; an admin certificate whose name or key the top level has with another key or
    name is skipped with a WARNING. A key moved out of ``admin/`` (or removed) is no
    admin from the next ``reload()`` on.

    ``changed()`` is cheap (one directory listing, one ``stat`` per certificate), for a
    node to call every ``RELOAD_INTERVAL`` seconds; ``reload()`` then reads the files
    again. A key removed is refused by ``allows()`` as soon as ``reload()`` returns: a
    node that polls every P seconds refuses it within P seconds of the removal.
    ``changed()`` sees a file added, removed, renamed or written (a write moves its
    ctime, which no program can set back); it cannot see a change made within the
    same clock tick as the previous look, on a file system whose clock is coarse.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise ConfigError(
                f"trust directory {str(self.directory)!r} does not exist or is not a "
                "directory; create it and copy the NAME.key public files of the trusted "
                "nodes into it"
            )
        self._by_name: dict[str, bytes] = {}
        self._by_key: dict[bytes, str] = {}
        self._admins: frozenset[bytes] = frozenset()
        self._snapshot: _Snapshot | None = None
        self._warned: dict[str, _FileStamp] = {}  # the version of each file warned about
        self.reload()

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def name_of(self, key: bytes) -> str | None:
        return self._by_key.get(key)

    def key_of(self, name: str) -> bytes | None:
        return self._by_name.get(name)

    def allows(self, key: bytes) -> bool:
        return key in self._by_key

    def identity_ok(self, node_id: str, key: bytes) -> bool:
        return self._by_key.get(key) == node_id

    def bind(self, node_id: str, key: bytes) -> bool:
        return self._by_key.get(key) == node_id  # the directory binds, not the wire

    def is_admin(self, key: bytes) -> bool:
        return key in self._admins

    def admin_names(self) -> list[str]:
        return sorted(self._by_key[k] for k in self._admins)

    def changed(self) -> bool:
        """Whether the directory looks different from when it was last read."""
        return self._take_snapshot() != self._snapshot

    def reload(self) -> TrustChange:
        """Read the directory again; what changed. A directory gone trusts no one."""
        # The snapshot before the files: a change made while they are read shows up in
        # the next changed(), never lost.
        snapshot = self._take_snapshot()
        if snapshot == _GONE and self._snapshot != _GONE:
            # Fail closed: a directory gone (or unreadable) trusts no one until it is back.
            log.warning(
                "trust directory %s cannot be read: no peer is trusted until it can",
                self.directory,
            )
        stamps = {stamp[0]: stamp for stamp in snapshot[2]}
        by_name: dict[str, bytes] = {}
        by_key: dict[bytes, str] = {}
        admins: set[bytes] = set()
        admin_prefix = ADMIN_DIR + "/"
        # The top level first, then admin/: an admin certificate is checked against
        # the names above it.
        files = sorted(stamps, key=lambda n: (n.startswith(admin_prefix), n))
        for file_name in files:
            if file_name.endswith("/"):  # the admin directory's own stamp
                continue
            admin = file_name.startswith(admin_prefix)
            found = self._read(file_name, stamps[file_name], by_key, by_name if admin else None)
            if found is not None:
                by_name[found[0]] = found[1]
                by_key[found[1]] = found[0]
                if admin:
                    admins.add(found[1])
        self._warned = {n: s for n, s in self._warned.items() if stamps.get(n) == s}
        old = self._by_name
        old_admins = {self._by_key[k] for k in self._admins}
        new_admins = {by_key[k] for k in admins}
        change = TrustChange(
            added=frozenset(by_name.keys() - old.keys()),
            removed=frozenset(old.keys() - by_name.keys()),
            rekeyed=frozenset(n for n in by_name.keys() & old.keys() if by_name[n] != old[n]),
            admins_added=frozenset(new_admins - old_admins),
            admins_removed=frozenset(old_admins - new_admins),
        )
        self._by_name, self._by_key, self._snapshot = by_name, by_key, snapshot
        self._admins = frozenset(admins)
        return change

    def _read(
        self,
        file_name: str,
        stamp: _FileStamp,
        by_key: dict[bytes, str],
        top: dict[str, bytes] | None = None,
    ) -> tuple[str, bytes] | None:
        """One certificate; ``top`` (for one under ``admin/``): the names read above it."""
        name = file_name.removesuffix(PUBLIC_SUFFIX).removeprefix(ADMIN_DIR + "/")
        path = self.directory / file_name
        try:
            if not _NAME.fullmatch(name):
                raise _BadCertificate(f"is not named NODE_ID{PUBLIC_SUFFIX}")
            public, secret = _read_certificate(path, path.stat())
            if top is not None and name in top:
                if top[name] != public:
                    raise _BadCertificate(
                        f"holds another key than {name}{PUBLIC_SUFFIX} above it; one name, "
                        "one key: remove one of the two"
                    )
                return name, public  # the same key, promoted to admin
            if public in by_key:
                raise _BadCertificate(f"has the key of {by_key[public]!r} too")
        except (_BadCertificate, OSError) as exc:
            self._warn_once(file_name, stamp, f"skipped: {exc}")
            return None
        if secret is not None:  # used all the same: the public key is right
            self._warn_once(
                file_name,
                stamp,
                "holds a secret key: a trust directory needs only NAME.key public "
                "files; move the secret away",
            )
        return name, public

    def _warn_once(self, file_name: str, stamp: _FileStamp, why: str) -> None:
        if self._warned.get(file_name) != stamp:
            self._warned[file_name] = stamp
            log.warning("trust directory %s: %s %s", self.directory, file_name, why)

    def _take_snapshot(self) -> _Snapshot:
        try:
            top = os.stat(self.directory)
            stamps = _stamps(self.directory, "")
        except OSError:
            return _GONE
        admin = self.directory / ADMIN_DIR
        try:
            st = admin.stat()
            stamps.append((ADMIN_DIR + "/", st.st_ino, -1, st.st_mtime_ns, st.st_ctime_ns))
            stamps += _stamps(admin, ADMIN_DIR + "/")
        except OSError:  # no admin/ (the usual case), or unreadable: no admin keys
            pass
        return (top.st_ino, top.st_mtime_ns, frozenset(stamps))


def _stamps(directory: Path, prefix: str) -> list[_FileStamp]:
    """The stamp of each ``*.key`` of ``directory``, named ``prefix`` + its file name."""
    stamps: list[_FileStamp] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(PUBLIC_SUFFIX):
                continue
            name = prefix + entry.name
            try:
                st = entry.stat()  # follows a link: its target's changes count
            except OSError:  # a dangling link, or gone since the listing
                stamps.append((name, -1, -1, -1, -1))
                continue
            stamps.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return stamps


class FirstKeySeen:
    """Any key may connect; the first key a node id presents is bound to it.

    Encryption without authentication ("any key" mode): a stranger may join, but not
    speak for a node id that another key already has. Only ``bind()`` binds, which a
    node calls for a member's heartbeat (read on the PUB whose key its SUB checked);
    ``identity_ok()`` only checks, so requests and greetings, which anyone may send
    naming any id, cannot take ids for nodes yet to come, nor fill the table. At most
    ``limit`` node ids are bound (a node passes its ``max_peers``, plus one for its own
    id, which it binds to its own key when it starts); past it a new one is
    refused rather than an old binding dropped (which would let a stranger take over
    that id); ``unbind()`` releases the id of a member forgotten.
    """

    def __init__(self, limit: int = MAX_BINDINGS) -> None:
        self.limit = limit
        self._by_name: dict[str, bytes] = {}
        self._full_warned = False

    def __len__(self) -> int:
        return len(self._by_name)

    def allows(self, key: bytes) -> bool:
        return True

    def key_of(self, name: str) -> bytes | None:
        return self._by_name.get(name)

    def bind(self, node_id: str, key: bytes) -> bool:
        """Bind ``node_id`` to ``key`` if it has no key yet; False if it has another one."""
        bound = self._by_name.get(node_id)
        if bound is not None:
            return bound == key
        if len(self._by_name) >= self.limit:
            if not self._full_warned:
                self._full_warned = True
                log.warning(
                    "%d node ids are bound to keys, the most kept: new node ids are refused",
                    self.limit,
                )
            return False
        self._by_name[node_id] = key
        return True

    def unbind(self, node_id: str) -> None:
        """Forget ``node_id``'s key (a node known to be gone): the next key seen takes it."""
        self._by_name.pop(node_id, None)

    def identity_ok(self, node_id: str, key: bytes) -> bool:
        """Whether ``node_id`` is unbound or bound to ``key``; binds nothing."""
        bound = self._by_name.get(node_id)
        return bound is None or bound == key

    def is_admin(self, key: bytes) -> bool:
        """No key is an admin key: any key may connect, so a key proves nothing."""
        return False


# the settings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Security:
    """What a CURVE node needs: its own keys, and whom it trusts."""

    keys: KeyPair
    trust: TrustStore | FirstKeySeen


def load(options: NodeOptions) -> Security | None:
    """The key pair and the trust policy the ``curve_*`` settings name; None: plaintext.

    Reads the files (``NodeOptions.validated()`` does not), so a node calls it when it
    starts; every problem is a ``ConfigError`` naming the setting.
    """
    mode = curve_mode(options)
    if mode == "off":
        return None
    try:
        keys = load_secret(options.curve_secret_key)
    except ConfigError as exc:
        raise ConfigError(f"curve_secret_key: {exc.message}") from None
    if mode == "any_key":
        # Only members are bound (see FirstKeySeen): as many as the peer table holds,
        # and this node's own id.
        return Security(keys=keys, trust=FirstKeySeen(limit=options.max_peers + 1))
    try:
        return Security(keys=keys, trust=TrustStore(options.curve_trust_dir))
    except ConfigError as exc:
        raise ConfigError(f"curve_trust_dir: {exc.message}") from None


class AdminCheck:
    """Who may send this node admin requests (``Drain``, ``Configure``, any type with
    ``__admin__``): the one place that decides, asked before such a handler runs.

    - With a trust directory: only the keys of its ``admin/``. The key is the one the
      request's connection proved in its CURVE handshake (its ZAP User-Id), and it is
      looked up at each request, so a key taken out of ``admin/`` is refused from the
      directory's next reload on (``RELOAD_INTERVAL``).
    - Without one (plaintext, or ``curve_any_key``, where a key proves nothing), the
      ``plaintext_admin`` setting: ``loopback`` (the default) allows them while the
      node binds a loopback address, where only processes of this host can reach it, as
      an agent's local control port is; ``any`` allows whoever reaches the node; ``none``
      allows no one.
    """

    __slots__ = ("_admin_dir", "_node_id", "_refused", "_trust")

    def __init__(self, options: NodeOptions, trust: Trust | None) -> None:
        self._node_id = options.node_id
        self._trust = trust if isinstance(trust, TrustStore) else None
        self._admin_dir = os.path.join(options.curve_trust_dir, ADMIN_DIR)
        #: Without a trust directory, why every admin request is refused (None: none is).
        #: Decided once: neither the setting nor the bind address changes while it runs.
        self._refused: str | None = None
        mode = options.plaintext_admin
        if mode == "none":
            self._refused = (
                "plaintext_admin=none: no admin request is taken without a CURVE trust directory"
            )
        elif mode == "loopback" and not is_loopback(options.bind):
            self._refused = (
                f"it binds {options.bind} without a CURVE trust directory, where anyone who "
                "reaches it could (plaintext_admin=loopback takes them only on a loopback "
                "bind)"
            )

    def refusal(self, type_name: str, source: str, key: bytes) -> PermissionDenied | None:
        """Why ``source``'s ``type_name``, read on a connection with ``key``, may not
        run here (None: it may)."""
        trust = self._trust
        if trust is not None:
            if trust.is_admin(key):
                return None
            why = (
                f"key {key.decode('ascii', 'replace')} is not an admin key; admin keys are "
                f"the certificates in {self._admin_dir}/ (copy {source}{PUBLIC_SUFFIX} there)"
            )
        elif self._refused is None:
            return None
        else:
            why = (
                f"{self._refused}; use a CURVE trust directory with the caller's certificate "
                f"in its {ADMIN_DIR}/, or set plaintext_admin=any on this node"
            )
        return PermissionDenied(
            f"{type_name} from {source!r} refused on {self._node_id}: {why}", node=self._node_id
        )


def plaintext_meets_curve(who: str, why: str) -> str:
    """What a plaintext node says of a peer that uses CURVE (``why``: how it knows)."""
    return (
        f"{who} uses CURVE ({why}); this node runs in plaintext and cannot talk to it: "
        "set curve_secret_key and curve_trust_dir (or curve_any_key)"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind setting) is only this machine: 127.0.0.0/8, ::1, localhost.

    Names are not resolved: a host or interface name other than localhost is not
    loopback here, whatever it points at.
    """
    bare = host.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    if bare.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def plaintext_warning(bind_host: str) -> str | None:
    """The WARNING a plaintext node logs when it binds ``bind_host``; None on loopback."""
    if is_loopback(bind_host):
        return None
    return (
        f"binding {bind_host} without CURVE: anyone who can reach this node's ports can "
        "call its handlers, read its traffic and pose as a member; set curve_secret_key "
        "and curve_trust_dir (python -m catga_zmq keygen NAME writes a key pair)"
    )
