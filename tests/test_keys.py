"""CURVE keys and trust as files (catga_zmq.security), and the keygen command.

keygen runs as a user runs it, a process; the files it writes are read back with pyzmq's
own ``zmq.auth.load_certificate``, so the format is the library's, not only ours.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.auth
from _procs import child_env, python, run

from catga_zmq import ConfigError, Node, security
from catga_zmq._cli import settings_from_argv
from catga_zmq.config import NodeOptions, curve_mode, options_from_env, options_from_toml
from catga_zmq.security import (
    FirstKeySeen,
    KeyPair,
    Trust,
    TrustChange,
    TrustStore,
    generate,
    load_secret,
    plaintext_warning,
)

KEYGEN = python("-m", "catga_zmq", "keygen")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_0() -> Iterator[None]:
    # The most permissive umask: whatever keygen's files get is then its own doing.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# keygen ------------------------------------------------------------------------------------


def test_keygen_writes_a_pair_and_prints_its_public_key(tmp_path: Path) -> None:
    result = run([*KEYGEN, "shop-1", "--dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    public_file, secret_file = tmp_path / "shop-1.key", tmp_path / "shop-1.key_secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop-1.key", "shop-1.key_secret"]
    assert _mode(secret_file) == 0o600
    public, none = zmq.auth.load_certificate(public_file)
    assert none is None  # the public file holds no secret
    same_public, secret = zmq.auth.load_certificate(secret_file)
    assert same_public == public and secret is not None
    assert zmq.curve_public(secret) == public
    assert result.stdout == public.decode() + "\n"  # stdout: the key alone, for $(...)
    assert str(public_file) in result.stderr and str(secret_file) in result.stderr


def test_keygen_json_and_the_default_directory(tmp_path: Path) -> None:
    result = run([*KEYGEN, "n1", "--json", "--dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    found = msgspec.json.decode(result.stdout)
    assert found["name"] == "n1"
    assert found["public_file"] == str(tmp_path / "n1.key")
    assert found["public_key"].encode() == zmq.auth.load_certificate(tmp_path / "n1.key")[0]
    # Without --dir: the current directory (of the command; run() starts it in ROOT, so
    # the default is shown by --help instead of writing keys into the repository).
    helped = run([*KEYGEN, "--help"])
    assert helped.returncode == 0 and "default: this one" in helped.stdout


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    assert run([*KEYGEN, "n1", "--dir", str(tmp_path)]).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = run([*KEYGEN, "n1", "--dir", str(tmp_path)])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists; keys are never overwritten" in lines[0], lines
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # Only the secret file left: still refused, and no public file is written beside it.
    (tmp_path / "n1.key").unlink()
    result = run([*KEYGEN, "n1", "--dir", str(tmp_path)])
    assert result.returncode == 2 and "n1.key_secret' exists" in result.stderr
    assert not (tmp_path / "n1.key").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "a b", "n\n"])
def test_keygen_refuses_a_name_that_is_no_node_id(tmp_path: Path, name: str) -> None:
    result = run([*KEYGEN, name, "--dir", str(tmp_path)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "key name" in lines[0] and "is not valid" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_keygen_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    result = run([*KEYGEN, "n1", "--dir", str(tmp_path / "nope")])
    assert result.returncode == 2
    assert "does not exist; create it first" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_the_secret_file_is_never_open_to_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_0: None
) -> None:
    # zmq.auth writes with the umask (here 0: mode 0666); the secret may exist only in
    # a directory no one else may enter, and in place only with mode 0600.
    real = zmq.auth.create_certificates
    seen: list[int] = []

    def watched(key_dir: Any, name: str, metadata: Any = None) -> tuple[str, str]:
        seen.append(_mode(Path(key_dir)))
        return real(key_dir, name, metadata)

    monkeypatch.setattr(zmq.auth, "create_certificates", watched)
    public_file, secret_file = generate("n1", tmp_path)
    assert seen == [0o700]
    assert _mode(secret_file) == 0o600
    assert _mode(public_file) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.key", "n1.key_secret"]


def test_a_link_planted_at_the_secret_path_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "n1.key_secret").symlink_to(elsewhere)  # dangling: "exists" says no
    with pytest.raises(ConfigError, match="exists; keys are never overwritten"):
        generate("n1", tmp_path)
    assert not elsewhere.exists() and not (tmp_path / "n1.key").exists()


# load_secret -------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return generate("n1", tmp_path)


def test_load_secret_gives_the_pair(pair: tuple[Path, Path]) -> None:
    public_file, secret_file = pair
    keys = load_secret(secret_file)
    assert keys.public == zmq.auth.load_certificate(public_file)[0]
    assert zmq.curve_public(keys.secret) == keys.public
    assert keys.secret.decode() not in repr(keys)  # never in a log line
    with pytest.raises(AttributeError):
        keys.public = b""  # type: ignore[misc]


def test_a_secret_file_others_can_read_is_refused(pair: tuple[Path, Path]) -> None:
    secret_file = pair[1]
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_secret(secret_file)
    assert info.value.message == (
        f"secret key file {str(secret_file)!r} is readable by others (mode 0644); "
        f"chmod 600 {secret_file}"
    )
    secret_file.chmod(0o620)  # group may write: as bad
    with pytest.raises(ConfigError, match=r"is open to others \(mode 0620\); chmod 600"):
        load_secret(secret_file)
    secret_file.chmod(0o400)
    assert isinstance(load_secret(secret_file), KeyPair)


def test_a_public_certificate_as_the_secret_is_refused(pair: tuple[Path, Path]) -> None:
    public_file = pair[0]
    for mode in (0o644, 0o600):  # named as a public certificate whatever its mode
        public_file.chmod(mode)
        with pytest.raises(ConfigError) as info:
            load_secret(public_file)
        assert "has no secret key (a public certificate?)" in info.value.message
        assert "NAME.key_secret" in info.value.message


def _secret_file(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    path.chmod(0o600)
    return path


def _edit(path: Path, old: bytes, new: bytes) -> bytes:
    text = path.read_bytes()
    assert old in text
    return text.replace(old, new)


MALFORMED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "garbage": (lambda p: b"\x00\xff not a certificate\n", "has no public key"),
    "empty": (lambda p: b"", "has no public key"),
    "short-secret": (
        lambda p: _edit(p, b'secret-key = "', b'secret-key = "x'),
        "malformed secret key",
    ),
    "bad-public": (
        lambda p: _edit(p, b'public-key = "', b'public-key = "~~~~~'),
        "malformed public key",
    ),
    "huge": (lambda p: b"#" * (security.MAX_CERT_BYTES + 1), "too large for a key certificate"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_secret_file_is_refused_in_one_line(
    pair: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    make, expected = MALFORMED[case]
    bad = _secret_file(tmp_path / "bad.key_secret", make(pair[1]))
    with pytest.raises(ConfigError) as info:
        load_secret(bad)
    assert expected in info.value.message
    assert "\n" not in info.value.message


def test_a_secret_file_with_another_pairs_public_key_is_refused(tmp_path: Path) -> None:
    _, mine = generate("n1", tmp_path)
    theirs, _ = generate("n2", tmp_path)
    other = zmq.auth.load_certificate(theirs)[0]
    mixed = _secret_file(
        tmp_path / "mixed.key_secret",
        _edit(mine, load_secret(mine).public, other),
    )
    with pytest.raises(ConfigError, match="its public key is not the secret key's"):
        load_secret(mixed)


def test_a_missing_secret_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; python -m catga_zmq keygen"):
        load_secret(tmp_path / "nope.key_secret")
    with pytest.raises(ConfigError, match="is not a file"):
        load_secret(tmp_path)


# the trust directory -----------------------------------------------------------------------


class Keys:
    """Key pairs made once per test, by name, and the trust directory to copy them to."""

    def __init__(self, root: Path) -> None:
        self.made = root / "made"
        self.made.mkdir()
        self.trust = root / "trust"
        self.trust.mkdir()

    def public(self, name: str) -> bytes:
        if not (self.made / f"{name}.key").exists():
            generate(name, self.made)
        return zmq.auth.load_certificate(self.made / f"{name}.key")[0]

    def trust_as(self, name: str, key_of: str | None = None) -> bytes:
        """Copy ``key_of``'s public certificate (default: ``name``'s) in as NAME.key."""
        key = self.public(key_of or name)
        (self.trust / f"{name}.key").write_bytes((self.made / f"{key_of or name}.key").read_bytes())
        return key


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return found


def test_a_trust_store_maps_each_node_name_to_its_key(keys: Keys) -> None:
    a, b = keys.trust_as("shop-1"), keys.trust_as("shop-2")
    stranger = keys.public("stranger")
    store = TrustStore(keys.trust)
    assert store.names() == ["shop-1", "shop-2"] and len(store) == 2
    assert store.key_of("shop-1") == a and store.name_of(b) == "shop-2"
    assert a in store and stranger not in store
    assert store.allows(a) and not store.allows(stranger)
    assert store.key_of("stranger") is None and store.name_of(stranger) is None
    assert store.identity_ok("shop-1", a)
    assert not store.identity_ok("shop-2", a)  # shop-1's key cannot speak for shop-2
    assert not store.identity_ok("stranger", stranger)
    policy: Trust = store
    assert policy.allows(b)


def test_a_missing_trust_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trust directory .* does not exist"):
        TrustStore(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        TrustStore(tmp_path / "file")


def test_files_that_are_no_usable_certificate_are_skipped_with_one_warning_each(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga_zmq.security")
    a = keys.trust_as("a")
    (keys.trust / "garbage.key").write_bytes(b"\x00\xffno certificate\n")
    keys.trust_as("bad name", key_of="b")  # a stem that is no node id
    keys.trust_as("z-copy", key_of="a")  # a's key under a second name
    keys.trust_as(".hidden", key_of="h")  # not a *.key a shell would list: no warning
    (keys.trust / "readme.txt").write_text("not a certificate, not a *.key")
    store = TrustStore(keys.trust)
    assert store.names() == ["a"] and store.name_of(a) == "a"
    found = _warnings(caplog)
    assert len(found) == 3, found
    assert any("garbage.key skipped: has no public key" in w for w in found), found
    assert any("bad name.key skipped: is not named NODE_ID.key" in w for w in found), found
    assert any("z-copy.key skipped: has the key of 'a' too" in w for w in found), found
    # Reloading with those files unchanged warns no more; a changed one is warned again.
    keys.trust_as("c")
    assert store.reload() == TrustChange(added=frozenset({"c"}))
    assert _warnings(caplog) == []
    (keys.trust / "garbage.key").write_bytes(b"still no certificate\n")
    assert store.changed()
    store.reload()
    assert _warnings(caplog) == [
        f"trust directory {keys.trust}: garbage.key skipped: has no public key: it is not "
        "a zmq.auth certificate"
    ]


def test_a_secret_certificate_in_the_trust_directory_is_used_and_warned_about(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga_zmq.security")
    key = keys.public("n1")
    (keys.trust / "n1.key").write_bytes((keys.made / "n1.key_secret").read_bytes())
    store = TrustStore(keys.trust)
    assert store.key_of("n1") == key
    found = _warnings(caplog)
    assert len(found) == 1 and "n1.key holds a secret key" in found[0], found


def test_reload_sees_a_key_removed_added_or_replaced(keys: Keys) -> None:
    a, b = keys.trust_as("a"), keys.trust_as("b")
    store = TrustStore(keys.trust)
    assert not store.changed()
    # Removed: refused as soon as reload() returns; changed() sees it at once, so a node
    # that polls every RELOAD_INTERVAL refuses it within that.
    (keys.trust / "b.key").unlink()
    assert store.changed()
    assert b in store  # nothing changes before the reload
    assert store.reload() == TrustChange(removed=frozenset({"b"}))
    assert b not in store and not store.allows(b) and store.key_of("b") is None
    assert not store.identity_ok("b", b)
    assert not store.changed()
    assert not store.reload()  # nothing changed: a falsy TrustChange
    # Added.
    c = keys.trust_as("c")
    assert store.changed()
    assert store.reload() == TrustChange(added=frozenset({"c"}))
    assert store.name_of(c) == "c"
    # Replaced in place by a file of the same size: seen all the same (ctime, mtime).
    size = (keys.trust / "a.key").stat().st_size
    new_a = keys.trust_as("a", key_of="a2")
    assert (keys.trust / "a.key").stat().st_size == size and new_a != a
    assert store.changed()
    assert store.reload() == TrustChange(rekeyed=frozenset({"a"}))
    assert not store.allows(a) and store.identity_ok("a", new_a)


def test_a_trust_directory_gone_trusts_no_one(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="catga_zmq.security")
    a = keys.trust_as("a")
    store = TrustStore(keys.trust)
    shutil.rmtree(keys.trust)
    assert store.changed()
    assert store.reload() == TrustChange(removed=frozenset({"a"}))
    assert not store.allows(a) and len(store) == 0
    store.reload()
    found = _warnings(caplog)
    assert len(found) == 1 and "cannot be read: no peer is trusted" in found[0], found
    keys.trust.mkdir()
    keys.trust_as("a")
    assert store.changed()
    assert store.reload() == TrustChange(added=frozenset({"a"}))


# any key ------------------------------------------------------------------------------------


def test_first_key_seen_binds_each_node_id_to_its_first_key(keys: Keys) -> None:
    one, two = keys.public("one"), keys.public("two")
    policy = FirstKeySeen()
    assert policy.allows(one) and policy.allows(two)  # anyone may connect
    assert policy.key_of("n1") is None
    assert policy.bind("n1", one)
    assert policy.bind("n1", one)  # the same key again: still its own
    assert not policy.bind("n1", two)  # another key cannot take n1
    assert not policy.identity_ok("n1", two)
    assert policy.identity_ok("n2", two)  # unbound: anyone's, and identity_ok binds nothing
    assert policy.key_of("n2") is None and len(policy) == 1
    assert policy.bind("n2", two) and not policy.identity_ok("n2", one)
    assert policy.key_of("n2") == two and len(policy) == 2
    policy.unbind("n1")
    assert policy.identity_ok("n1", two) and policy.key_of("n1") is None
    assert policy.bind("n1", two)
    typed: Trust = policy
    assert typed.key_of("n1") == two


def test_first_key_seen_binds_a_bounded_number_of_ids(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="catga_zmq.security")
    key = keys.public("one")
    policy = FirstKeySeen(limit=3)
    assert all(policy.bind(f"n{i}", key) for i in range(3))
    assert not policy.bind("n3", key) and not policy.bind("n4", key)
    assert policy.bind("n0", key)  # ids bound before stay bound
    assert len(policy) == 3
    found = _warnings(caplog)
    assert len(found) == 1 and "3 node ids are bound" in found[0], found


# the settings ------------------------------------------------------------------------------

#: Settings together that cannot work, and what the error says.
BAD_COMBOS: list[tuple[dict[str, Any], str]] = [
    (
        {"curve_secret_key": "n1.key_secret", "curve_trust_dir": "trust", "curve_any_key": True},
        "curve_any_key and curve_trust_dir exclude each other",
    ),
    ({"curve_trust_dir": "trust", "curve_any_key": True}, "exclude each other"),
    ({"curve_trust_dir": "trust"}, "curve_trust_dir needs curve_secret_key"),
    ({"curve_any_key": True}, "curve_any_key needs curve_secret_key"),
    (
        {"curve_secret_key": "n1.key_secret"},
        "say which peers to trust: curve_trust_dir, or curve_any_key for encryption "
        "without authentication",
    ),
]


@pytest.mark.parametrize(("settings", "expected"), BAD_COMBOS)
def test_curve_settings_that_cannot_work_are_refused_at_construction(
    settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Node("a", discovery=None, **settings)
    assert expected in info.value.message
    with pytest.raises(ConfigError, match=expected):
        NodeOptions(**settings).validated()


def test_curve_settings_that_work_are_taken_without_reading_the_files() -> None:
    # The files are read when the node starts (security.load), not when it is built.
    plain = Node("a", discovery=None).options
    assert (plain.curve_secret_key, plain.curve_trust_dir, plain.curve_any_key) == ("", "", False)
    assert curve_mode(plain) == "off"
    trusted = Node(
        "a", discovery=None, curve_secret_key="/no/such.key_secret", curve_trust_dir="/no/dir"
    ).options
    assert curve_mode(trusted) == "trust_dir"
    any_key = Node(
        "a", discovery=None, curve_secret_key="/no/such.key_secret", curve_any_key=True
    ).options
    assert curve_mode(any_key) == "any_key"


def test_curve_settings_from_variables_flags_and_toml(tmp_path: Path) -> None:
    env = options_from_env(
        {"CATGA_CURVE_SECRET_KEY": "k/n1.key_secret", "CATGA_CURVE_ANY_KEY": "true"}
    )
    assert env == {"curve_secret_key": "k/n1.key_secret", "curve_any_key": True}
    assert curve_mode(NodeOptions().merged(env).validated()) == "any_key"
    with pytest.raises(ConfigError, match="curve_any_key needs curve_secret_key"):
        NodeOptions().merged(options_from_env({"CATGA_CURVE_ANY_KEY": "1"})).validated()
    with pytest.raises(ConfigError) as info:
        options_from_env({"CATGA_CURVE_ANY_KEY": "yes"})
    assert info.value.message == (
        "CATGA_CURVE_ANY_KEY='yes' is not a yes or no; use true or false (or 1 or 0)"
    )
    # A flag alone means yes.
    flags = settings_from_argv(["--curve-secret-key", "n1.key_secret", "--curve-any-key"])
    assert flags == {"curve_secret_key": "n1.key_secret", "curve_any_key": True}
    assert settings_from_argv(["--curve-any-key", "false"]) == {"curve_any_key": False}
    toml = tmp_path / "catga.toml"
    toml.write_text('[node]\ncurve_secret_key = "n1.key_secret"\ncurve_trust_dir = "trust"\n')
    assert curve_mode(NodeOptions().merged(options_from_toml(toml)).validated()) == "trust_dir"


def test_the_node_command_refuses_curve_settings_that_cannot_work() -> None:
    # Through the environment, as a deployment sets it: one line, exit 2, no node started.
    result = run(
        python("-m", "catga_zmq.node", "--discovery", "none"),
        env=child_env(CATGA_CURVE_SECRET_KEY="n1.key_secret"),
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "say which peers to trust" in lines[0], lines
    assert "ready" not in result.stdout


@pytest.mark.parametrize("name", ["curve_secret_key", "curve_trust_dir"])
@pytest.mark.parametrize("value", ["keys/n1\n", "a\x00b", "p" * 4097])
def test_curve_paths_are_bounded_like_every_text_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Node("a", discovery=None, **{name: value})
    message = info.value.message
    assert message.startswith(f"{name}=") and len(message) < 600, message
    assert "is not allowed; use empty, or a path up to 4096 characters" in message
    assert Node("a", discovery=None, curve_any_key=True, curve_secret_key="p" * 4096)


# security.load ------------------------------------------------------------------------------


def test_load_gives_nothing_in_plaintext() -> None:
    assert security.load(NodeOptions()) is None


def test_load_reads_the_keys_and_the_trust_policy(keys: Keys) -> None:
    peer = keys.trust_as("shop-2")
    keys.public("shop-1")
    secret = str(keys.made / "shop-1.key_secret")
    loaded = security.load(NodeOptions(curve_secret_key=secret, curve_trust_dir=str(keys.trust)))
    assert loaded is not None
    assert loaded.keys == load_secret(secret)
    assert isinstance(loaded.trust, TrustStore) and loaded.trust.name_of(peer) == "shop-2"
    any_key = security.load(NodeOptions(curve_secret_key=secret, curve_any_key=True))
    assert any_key is not None and isinstance(any_key.trust, FirstKeySeen)


def test_load_names_the_setting_of_a_file_it_cannot_use(keys: Keys) -> None:
    keys.public("n1")
    secret = keys.made / "n1.key_secret"
    with pytest.raises(ConfigError) as info:
        security.load(NodeOptions(curve_secret_key=str(keys.made / "nope"), curve_any_key=True))
    assert info.value.message.startswith("curve_secret_key: secret key file ")
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"] curve_secret_key: .* is readable by others"):
        security.load(NodeOptions(curve_secret_key=str(secret), curve_any_key=True))
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match=r"] curve_trust_dir: trust directory .* does not"):
        security.load(
            NodeOptions(curve_secret_key=str(secret), curve_trust_dir=str(keys.made / "nope"))
        )
    with pytest.raises(ConfigError, match="say which peers to trust"):
        security.load(NodeOptions(curve_secret_key=str(secret)))


# the plaintext warning ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_no_plaintext_warning_on_loopback(host: str) -> None:
    assert plaintext_warning(host) is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "*", "::", "192.168.1.20", "fe80::1%eth0", "eth0", "my-host"]
)
def test_a_plaintext_warning_off_loopback(host: str) -> None:
    text = plaintext_warning(host)
    assert text is not None and "\n" not in text
    assert text.startswith(f"binding {host} without CURVE: ")
    assert "set curve_secret_key and curve_trust_dir" in text
