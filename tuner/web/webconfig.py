"""The listener's web configuration file (Prometheus exporter-toolkit format): TLS and users.

The file is the one Prometheus exporters take with ``--web.config.file``::

    tls_server_config:
      cert_file: server.crt          # paths relative to the web config file
      key_file: server.key
      client_ca_file: ca.crt         # optional: verify client certificates against this CA
      client_auth_type: RequireAndVerifyClientCert
      client_allowed_sans: [client.example]   # optional
      min_version: TLS12             # TLS12 (default) or TLS13; max_version likewise
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      alice: $2b$12$...              # bcrypt hashes only (htpasswd -nBC 10 alice)

``load_web_config`` validates it: an unknown key, a bad bcrypt hash, a missing or unreadable
certificate or key file, an unknown TLS version or client auth type is a ``ConfigError`` (exit 2)
naming the file and the key. ``WebConfigWatcher`` holds the current one and re-reads the file
and every file it names when one of them changes, without a restart; a change that does not
validate (or a file that disappears) keeps the last good configuration and is logged once.

``check_basic_auth`` does one bcrypt check per request whatever the user name: an unknown user
is checked against a dummy hash of the same cost, so the answer time does not tell which users
exist; a correct password is remembered (by a SHA-256 of user, password and hash) so a client
that sends credentials on every request does not pay bcrypt every time, as exporter-toolkit does.

Python's ``ssl`` verifies every client certificate it requests, so ``RequestClientCert`` and
``RequireAnyClientCert`` (request without verifying) are refused with a message saying so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import bcrypt

from tuner.config import read_yaml
from tuner.errors import ConfigError

log = logging.getLogger("tuner.web")

_BCRYPT_RE = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "client_allowed_sans",
             "min_version", "max_version", "prefer_server_cipher_suites")
_HTTP_KEYS = ("headers", "http2")
# exporter-toolkit's list of response headers a web config may set
_ALLOWED_HEADERS = ("Cache-Control", "Content-Security-Policy", "Strict-Transport-Security",
                    "X-Content-Type-Options", "X-Frame-Options", "X-XSS-Protection")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_NOT_FILES = {
    "cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file",
}
AUTH_REALM = 'Basic realm="tuner"'


class ClientAuth(Enum):
    """``client_auth_type``: whether the listener asks for and verifies client certificates."""

    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``: the listener's certificate and what it asks of clients."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: ClientAuth = ClientAuth.NO_CLIENT_CERT
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class WebConfig:
    """A validated web configuration (an empty one when no file is given: plain HTTP, no users).

    ``users`` maps user names to bcrypt hashes; ``healthz_open`` leaves ``/healthz`` reachable
    without credentials (for probes) when users exist.
    """

    source: Path | None = None
    tls: TLSServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[Path, ...] = ()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context of this configuration (None for plain HTTP)."""
        return None if self.tls is None else _server_context(self.source, self.tls)


def _fail(source: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def _mapping(source: Path, value: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(source, key or "<top level>", f"must be a mapping, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            hint = (f"; inline certificates and keys are not read, use {_NOT_FILES[k]}"
                    if k in _NOT_FILES else "")
            raise _fail(source, where, f"unknown key{hint}; allowed keys here: "
                        f"{', '.join(allowed)}")
    return value


def _file(source: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"{value!r} is not a file path")
    path = Path(value)
    path = path if path.is_absolute() else source.parent / path
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise _fail(source, key, f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _bool(source: Path, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, f"{value!r} is not true or false")
    return value


def parse_web_config(data: Any, source: Path) -> WebConfig:
    """Validate a parsed web config document (see the module docstring); raises ConfigError."""
    top = _mapping(source, data, "", _TOP_KEYS)
    files: list[Path] = [source]
    tls = None
    if top.get("tls_server_config") is not None:
        tls = _parse_tls(source, top["tls_server_config"], files)
        _server_context(source, tls)  # a key that does not match its certificate fails now
    http = _mapping(source, top.get("http_server_config"), "http_server_config", _HTTP_KEYS)
    if "http2" in http:
        _bool(source, http["http2"], "http_server_config.http2")  # HTTP/1.1 is all we serve
    headers_raw = http.get("headers") or {}
    if not isinstance(headers_raw, Mapping):
        raise _fail(source, "http_server_config.headers", "must map header names to values")
    headers = []
    for name, value in headers_raw.items():
        if name not in _ALLOWED_HEADERS:
            raise _fail(source, f"http_server_config.headers.{name}",
                        f"not a header a web config may set; allowed: "
                        f"{', '.join(_ALLOWED_HEADERS)}")
        if not isinstance(value, str):
            raise _fail(source, f"http_server_config.headers.{name}", "must be a string")
        headers.append((str(name), value))
    users_raw = top.get("basic_auth_users") or {}
    if not isinstance(users_raw, Mapping):
        raise _fail(source, "basic_auth_users", "must map user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for name, hashed in users_raw.items():
        key = f"basic_auth_users.{name}"
        if not isinstance(name, str) or not name or ":" in name:
            raise _fail(source, key, "a user name is a non-empty string without ':'")
        users[name] = _bcrypt_hash(source, hashed, key)
    return WebConfig(source, tls, users, tuple(headers), tuple(files))


def _bcrypt_hash(source: Path, value: Any, key: str) -> bytes:
    """A bcrypt hash, checked to be one bcrypt can use (never echoing it back)."""
    what = "is not a bcrypt hash (make one with: htpasswd -nBC 10 USER)"
    if not isinstance(value, str) or not _BCRYPT_RE.match(value):
        raise _fail(source, key, what)
    try:
        bcrypt.checkpw(b"", value.encode())
    except ValueError:
        raise _fail(source, key, what) from None
    return value.encode()


def _parse_tls(source: Path, raw: Any, files: list[Path]) -> TLSServerConfig:
    k = "tls_server_config"
    m = _mapping(source, raw, k, _TLS_KEYS)
    for required in ("cert_file", "key_file"):
        if required not in m:
            raise _fail(source, f"{k}.{required}", "is required for TLS")
    cert = _file(source, m["cert_file"], f"{k}.cert_file")
    key = _file(source, m["key_file"], f"{k}.key_file")
    files += [cert, key]
    ca = None
    if m.get("client_ca_file") is not None:
        ca = _file(source, m["client_ca_file"], f"{k}.client_ca_file")
        files.append(ca)
    auth_text = m.get("client_auth_type") or "NoClientCert"
    try:
        auth = ClientAuth(auth_text)
    except ValueError:
        raise _fail(source, f"{k}.client_auth_type", f"{auth_text!r} is not one of "
                    f"{', '.join(a.value for a in ClientAuth)}") from None
    if auth in (ClientAuth.REQUEST_CLIENT_CERT, ClientAuth.REQUIRE_ANY_CLIENT_CERT):
        raise _fail(source, f"{k}.client_auth_type",
                    f"{auth.value} (a client certificate without verification) is not supported: "
                    "Python's TLS verifies every certificate it asks for; use "
                    "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
    if auth is not ClientAuth.NO_CLIENT_CERT and ca is None:
        raise _fail(source, f"{k}.client_ca_file",
                    f"is required with client_auth_type {auth.value}")
    if ca is not None and auth is ClientAuth.NO_CLIENT_CERT:
        raise _fail(source, f"{k}.client_auth_type", "client_ca_file is set but client_auth_type "
                    "is NoClientCert (set VerifyClientCertIfGiven or RequireAndVerifyClientCert)")
    sans = m.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
        raise _fail(source, f"{k}.client_allowed_sans", "must be a list of names")
    if sans and ca is None:
        raise _fail(source, f"{k}.client_allowed_sans", "needs client_ca_file")
    versions = {}
    for vk, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        text = m.get(vk, default)
        if text not in _TLS_VERSIONS:
            raise _fail(source, f"{k}.{vk}", f"{text!r} is not one of {', '.join(_TLS_VERSIONS)}")
        versions[vk] = _TLS_VERSIONS[text]
    if versions["min_version"] > versions["max_version"]:
        raise _fail(source, f"{k}.min_version", "is above max_version")
    prefer = _bool(source, m.get("prefer_server_cipher_suites", True),
                   f"{k}.prefer_server_cipher_suites")
    return TLSServerConfig(cert, key, ca, auth, tuple(sans), versions["min_version"],
                           versions["max_version"], prefer)


def _server_context(source: Path | None, tls: TLSServerConfig) -> ssl.SSLContext:
    where = source or Path("<web config>")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise _fail(where, "tls_server_config.key_file",
                    f"cannot use {tls.cert_file} with {tls.key_file}: {exc}") from None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise _fail(where, "tls_server_config.client_ca_file",
                        f"cannot load {tls.client_ca_file}: {exc}") from None
        ctx.verify_mode = (ssl.CERT_REQUIRED
                           if tls.client_auth is ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT
                           else ssl.CERT_OPTIONAL)
    return ctx


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web config file; ConfigError naming the file and the key."""
    data = read_yaml(path, "web config file")
    return parse_web_config(data, path)


def peer_allowed(config: WebConfig, peer_cert: Mapping[str, Any] | None) -> bool:
    """Whether a verified client certificate carries one of ``client_allowed_sans``."""
    if config.tls is None or not config.tls.client_allowed_sans:
        return True
    if peer_cert is None:
        return False
    sans = {value for _kind, value in peer_cert.get("subjectAltName", ())}
    return any(s in sans for s in config.tls.client_allowed_sans)


# -- basic auth --------------------------------------------------------------------------------


class BasicAuthChecker:
    """Checks ``Authorization: Basic`` against a config's users in constant work per request."""

    def __init__(self, max_cached: int = 1024) -> None:
        self._dummy: dict[int, bytes] = {}
        self._ok: dict[bytes, None] = {}
        self._max = max_cached
        self._lock = threading.Lock()

    def _dummy_hash(self, cost: int) -> bytes:
        with self._lock:
            if cost not in self._dummy:
                self._dummy[cost] = bcrypt.hashpw(os.urandom(16).hex().encode(),
                                                  bcrypt.gensalt(rounds=max(4, min(cost, 31))))
            return self._dummy[cost]

    def check(self, config: WebConfig, header: str | None) -> bool:
        """True when ``header`` carries a user of ``config`` and that user's password."""
        credentials = parse_basic_header(header)
        if credentials is None:
            return False
        user, password = credentials
        known = config.users.get(user)
        cost = _hash_cost(known) if known is not None else _hash_cost(
            next(iter(config.users.values()), b"$2b$10$"))
        hashed = known if known is not None else self._dummy_hash(cost)
        key = hashlib.sha256(b"\0".join((user.encode(), password, hashed))).digest()
        with self._lock:
            cached = key in self._ok
        if cached and known is not None:
            return True
        ok = bcrypt.checkpw(password, hashed) and known is not None
        if ok:
            with self._lock:
                if len(self._ok) >= self._max:
                    self._ok.pop(next(iter(self._ok)))
                self._ok[key] = None
        return ok


def _hash_cost(hashed: bytes) -> int:
    m = re.match(rb"^\$2[abxy]?\$(\d\d)\$", hashed)
    return int(m.group(1)) if m else 10


def parse_basic_header(header: str | None) -> tuple[str, bytes] | None:
    """``Authorization: Basic base64(user:password)`` → (user, password bytes), else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


# -- the watcher: re-read on change ------------------------------------------------------------


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class WebConfigWatcher:
    """The current web configuration (and its TLS context), re-read when its files change.

    ``current()`` looks at the files' modification times at most every ``check_every``
    seconds; a changed set is re-validated and replaces the old one only if it is good.
    """

    def __init__(self, path: Path | None, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_every = check_every
        self.clock = clock
        self._lock = threading.Lock()
        self.config = load_web_config(path) if path is not None else WebConfig()
        self.context = self.config.ssl_context()
        self._stamp = _stamp(self.config.files)
        self._checked = clock()
        self._bad_stamp: tuple[tuple[int, int] | None, ...] | None = None
        self.auth = BasicAuthChecker()

    @property
    def tls(self) -> bool:
        return self.config.tls is not None

    def current(self) -> tuple[WebConfig, ssl.SSLContext | None]:
        """The configuration and TLS context to use for a new connection or request."""
        if self.path is None:
            return self.config, self.context
        with self._lock:
            now = self.clock()
            if now - self._checked >= self.check_every:
                self._checked = now
                self._reload_if_changed()
            return self.config, self.context

    def _reload_if_changed(self) -> None:
        assert self.path is not None
        stamp = _stamp(self.config.files)
        if stamp == self._stamp or stamp == self._bad_stamp:
            return
        try:
            config = load_web_config(self.path)
            context = config.ssl_context()
        except ConfigError as exc:
            self._bad_stamp = stamp  # said once per change
            log.error("web config: keeping the last good configuration: %s", exc)
            return
        self.config, self.context = config, context
        self._stamp = _stamp(config.files)
        self._bad_stamp = None
        log.info("web config: re-read %s (%s, %d user(s))", self.path,
                 "TLS" if config.tls else "plain HTTP", len(config.users))

    def authorized(self, config: WebConfig, header: str | None) -> bool:
        """Whether a request may pass: always without users, else valid basic credentials."""
        return not config.users or self.auth.check(config, header)
