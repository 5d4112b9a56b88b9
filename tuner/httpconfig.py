"""Prometheus's ``http_config`` for every client tuner opens; the one place httpx clients are made.

The fields are Prometheus's (``scrape_config``, ``alertmanager_config``, promtool's
``--http.config.file``), so a user's existing blocks work unchanged::

    tls_config: {ca_file, cert_file, key_file, server_name, insecure_skip_verify, min_version}
    authorization: {type: Bearer, credentials_file: /secrets/token}
    bearer_token_file: /secrets/token          # the older spelling of the same thing
    basic_auth: {username: tuner, password_file: /secrets/password}
    proxy_url: http://proxy:3128
    http_headers: {X-Scope-OrgID: {values: [tenant-a]}, X-Api-Key: {files: [/secrets/key]}}
    follow_redirects: true

Secrets are read only from files: ``password``, ``credentials``, ``bearer_token`` and a header's
``secrets`` are refused with a message saying which ``*_file`` key to use, and a proxy URL may
not carry a password. A secret file is read at load time (a missing one is a ``ConfigError``
naming the file and the key) and again before each request, so a rotated token is used without
a restart; a secret file that disappears or becomes unreadable while running keeps the last
value read, and that is logged once per file. Secret values never appear in a message, a
``repr`` or a log line: records hold paths, never contents.

``make_client`` builds the ``httpx.Client`` for a record (TLS context, per-request
credentials, proxy, headers, ``server_name`` as SNI and the name checked); ``request_headers``
and ``tls_context`` are for clients that are not httpx (the Prometheus API client).
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tuner.errors import ConfigError, SecretFileError

log = logging.getLogger("tuner.http")

#: The keys of an ``http_config`` block (inline in a target or an Alertmanager entry).
HTTP_CONFIG_KEYS = ("tls_config", "authorization", "bearer_token_file", "basic_auth", "proxy_url",
                    "http_headers", "follow_redirects", "bearer_token")
_TLS_KEYS = ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify",
             "min_version", "ca", "cert", "key")
_AUTHZ_KEYS = ("type", "credentials_file", "credentials")
_BASIC_KEYS = ("username", "username_file", "password_file", "password")
_HEADER_KEYS = ("values", "files", "secrets")
_INLINE_SECRETS = {
    "bearer_token": "bearer_token_file", "credentials": "credentials_file",
    "password": "password_file", "secrets": "files", "ca": "ca_file", "cert": "cert_file",
    "key": "key_file",
}
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_RESERVED_HEADERS = ("authorization", "host", "content-length", "content-type",
                     "user-agent", "connection")


class AuthKind(Enum):
    """Which credentials a client sends."""

    NONE = "none"
    BASIC = "basic_auth"
    AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class TLSClientConfig:
    """``tls_config``: whom to trust, which client certificate to show, which name to check."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class Header:
    """One extra request header: fixed values and/or values read from files (secrets)."""

    name: str
    values: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class HTTPClientConfig:
    """A validated ``http_config`` (the default is: system CAs, no credentials, no proxy)."""

    tls: TLSClientConfig = field(default_factory=TLSClientConfig)
    auth: AuthKind = AuthKind.NONE
    username: str | None = None
    username_file: Path | None = None
    secret_file: Path | None = None  # password_file, credentials_file or bearer_token_file
    auth_type: str = "Bearer"
    proxy_url: str | None = None
    headers: tuple[Header, ...] = ()
    follow_redirects: bool = True

    @property
    def secret_files(self) -> tuple[Path, ...]:
        files = [f for f in (self.secret_file, self.username_file) if f is not None]
        return tuple(files) + tuple(f for h in self.headers for f in h.files)


DEFAULT_HTTP_CONFIG = HTTPClientConfig()


# -- parsing ---------------------------------------------------------------------------------

Fail = Callable[[str, str], ConfigError]


def _mapping(fail: Fail, value: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(key, f"must be a mapping, got {type(value).__name__}")
    for k in value:
        if k in _INLINE_SECRETS:
            raise fail(f"{key}.{k}", f"secrets and certificates are read only from files: "
                       f"use {_INLINE_SECRETS[k]} (a file path) instead")
        if k not in allowed:
            raise fail(f"{key}.{k}", f"unknown key; allowed keys here: "
                       f"{', '.join(a for a in allowed if a not in _INLINE_SECRETS)}")
    return value


def _path(fail: Fail, value: Any, key: str, base_dir: Path, secret: bool) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(key, f"{value!r} is not a file path")
    path = Path(value)
    path = path if path.is_absolute() else base_dir / path
    try:
        if secret:
            SECRETS.read(path)
        else:
            with path.open("rb") as fh:
                fh.read(1)
    except (OSError, SecretFileError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise fail(key, f"cannot read {path}: {reason}") from None
    return path


def _bool(fail: Fail, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise fail(key, f"{value!r} is not true or false")
    return value


def parse_http_config(data: Mapping[str, Any], fail: Fail, key: str,
                      base_dir: Path) -> HTTPClientConfig:
    """The ``http_config`` keys of ``data`` (other keys are the caller's) as a record.

    ``fail(dotted_key, message)`` makes the caller's ConfigError; ``key`` prefixes the keys
    named in errors (``targets[0]``); relative paths are relative to ``base_dir``.
    """
    prefix = f"{key}." if key else ""
    for k in ("bearer_token",):
        if k in data:
            raise fail(f"{prefix}{k}", f"secrets are read only from files: use "
                       f"{_INLINE_SECRETS[k]} (a file path) instead")
    tls = _parse_tls(fail, data.get("tls_config"), f"{prefix}tls_config", base_dir)
    auth, username, username_file, secret, auth_type = AuthKind.NONE, None, None, None, "Bearer"
    given = [k for k in ("authorization", "bearer_token_file", "basic_auth") if data.get(k)]
    if len(given) > 1:
        raise fail(f"{prefix}{given[1]}", f"only one of {', '.join(given)} may be set")
    if data.get("authorization") is not None:
        m = _mapping(fail, data["authorization"], f"{prefix}authorization", _AUTHZ_KEYS)
        auth_type = m.get("type", "Bearer")
        if not isinstance(auth_type, str) or not auth_type or " " in auth_type:
            raise fail(f"{prefix}authorization.type", f"{auth_type!r} is not a scheme name")
        if auth_type.lower() == "basic":
            raise fail(f"{prefix}authorization.type", "use basic_auth for Basic credentials")
        if "credentials_file" not in m:
            raise fail(f"{prefix}authorization.credentials_file", "is required")
        secret = _path(fail, m["credentials_file"], f"{prefix}authorization.credentials_file",
                       base_dir, secret=True)
        auth = AuthKind.AUTHORIZATION
    elif data.get("bearer_token_file") is not None:
        secret = _path(fail, data["bearer_token_file"], f"{prefix}bearer_token_file", base_dir,
                       secret=True)
        auth = AuthKind.AUTHORIZATION
    elif data.get("basic_auth") is not None:
        m = _mapping(fail, data["basic_auth"], f"{prefix}basic_auth", _BASIC_KEYS)
        if ("username" in m) == ("username_file" in m):
            raise fail(f"{prefix}basic_auth.username", "set exactly one of username, "
                       "username_file")
        if "username" in m:
            username = m["username"]
            if not isinstance(username, str) or not username or ":" in username:
                raise fail(f"{prefix}basic_auth.username", "must be a non-empty name without ':'")
        else:
            username_file = _path(fail, m["username_file"], f"{prefix}basic_auth.username_file",
                                  base_dir, secret=True)
        if "password_file" not in m:
            raise fail(f"{prefix}basic_auth.password_file", "is required (a file holding the "
                       "password)")
        secret = _path(fail, m["password_file"], f"{prefix}basic_auth.password_file", base_dir,
                       secret=True)
        auth = AuthKind.BASIC
    proxy = data.get("proxy_url")
    if proxy is not None:
        parts = urlsplit(proxy) if isinstance(proxy, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise fail(f"{prefix}proxy_url", f"{proxy!r} is not an http(s) URL")
        if parts.password:
            raise fail(f"{prefix}proxy_url", "a proxy URL may not carry a password "
                       "(secrets are read only from files)")
    headers = _parse_headers(fail, data.get("http_headers"), f"{prefix}http_headers", base_dir)
    follow = _bool(fail, data.get("follow_redirects", True), f"{prefix}follow_redirects")
    return HTTPClientConfig(tls, auth, username, username_file, secret, auth_type, proxy,
                            headers, follow)


def _parse_tls(fail: Fail, raw: Any, key: str, base_dir: Path) -> TLSClientConfig:
    m = _mapping(fail, raw, key, _TLS_KEYS)
    paths = {k: _path(fail, m[k], f"{key}.{k}", base_dir, secret=(k == "key_file"))
             for k in ("ca_file", "cert_file", "key_file") if m.get(k) is not None}
    if ("cert_file" in paths) != ("key_file" in paths):
        missing = "key_file" if "cert_file" in paths else "cert_file"
        raise fail(f"{key}.{missing}", "cert_file and key_file go together")
    server_name = m.get("server_name")
    if server_name is not None and (not isinstance(server_name, str) or not server_name):
        raise fail(f"{key}.server_name", f"{server_name!r} is not a host name")
    version = m.get("min_version", "TLS12")
    if version not in _TLS_VERSIONS:
        raise fail(f"{key}.min_version", f"{version!r} is not one of {', '.join(_TLS_VERSIONS)}")
    cfg = TLSClientConfig(paths.get("ca_file"), paths.get("cert_file"), paths.get("key_file"),
                          server_name, _bool(fail, m.get("insecure_skip_verify", False),
                                             f"{key}.insecure_skip_verify"),
                          _TLS_VERSIONS[version])
    try:
        tls_context(cfg)
    except (ssl.SSLError, OSError) as exc:
        which = "ca_file" if cfg.cert_file is None else "key_file"
        raise fail(f"{key}.{which}", f"cannot use the TLS files: {exc}") from None
    return cfg


def _parse_headers(fail: Fail, raw: Any, key: str, base_dir: Path) -> tuple[Header, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise fail(key, "must map header names to {values: [...], files: [...]}")
    out = []
    for name, spec in raw.items():
        hkey = f"{key}.{name}"
        if not isinstance(name, str) or not name or name.lower() in _RESERVED_HEADERS:
            raise fail(hkey, f"cannot set this header (reserved: {', '.join(_RESERVED_HEADERS)})")
        m = _mapping(fail, spec, hkey, _HEADER_KEYS)
        values = m.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise fail(f"{hkey}.values", "must be a list of strings")
        files_raw = m.get("files") or []
        if not isinstance(files_raw, list):
            raise fail(f"{hkey}.files", "must be a list of file paths")
        files = tuple(_path(fail, f, f"{hkey}.files[{i}]", base_dir, secret=True)
                      for i, f in enumerate(files_raw))
        if not values and not files:
            raise fail(hkey, "needs values or files")
        out.append(Header(name, tuple(values), files))
    return tuple(out)


# -- secret files ------------------------------------------------------------------------------


class SecretFiles:
    """Reads secret files, re-reading on each use; keeps the last good value of a file that goes.

    ``read(path)`` returns the file's text without surrounding whitespace. A file that cannot
    be read raises ``SecretFileError`` the first time; once read, it keeps answering with the
    last good value and logs (once, until the file is back) that it did.
    """

    def __init__(self) -> None:
        self._last: dict[Path, str] = {}
        self._missing: set[Path] = set()
        self._lock = threading.Lock()

    def read(self, path: Path) -> str:
        try:
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            with self._lock:
                if path not in self._last:
                    raise SecretFileError(f"secret file {path}: {reason}") from None
                if path not in self._missing:
                    self._missing.add(path)
                    log.warning("secret file %s: %s; keeping the last value read", path, reason)
                return self._last[path]
        with self._lock:
            if path in self._missing:
                self._missing.discard(path)
                log.info("secret file %s is readable again", path)
            self._last[path] = value
        return value


SECRETS = SecretFiles()


def request_headers(cfg: HTTPClientConfig, secrets: SecretFiles = SECRETS) -> dict[str, str]:
    """The headers a request carries under ``cfg`` (credentials read from their files now)."""
    out: dict[str, str] = {}
    for header in cfg.headers:
        values = [*header.values, *(secrets.read(f) for f in header.files)]
        out[header.name] = ", ".join(values)
    if cfg.auth is AuthKind.AUTHORIZATION and cfg.secret_file is not None:
        out["Authorization"] = f"{cfg.auth_type} {secrets.read(cfg.secret_file)}"
    elif cfg.auth is AuthKind.BASIC and cfg.secret_file is not None:
        user = cfg.username if cfg.username_file is None else secrets.read(cfg.username_file)
        pair = f"{user or ''}:{secrets.read(cfg.secret_file)}".encode()
        out["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return out


def tls_context(tls: TLSClientConfig) -> ssl.SSLContext:
    """The client TLS context of a ``tls_config`` (system CAs unless ``ca_file``)."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = tls.min_version
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


class _FileAuth(httpx.Auth):
    """Sets the config's credentials and headers on each request, read from files each time."""

    def __init__(self, cfg: HTTPClientConfig, secrets: SecretFiles) -> None:
        self.cfg = cfg
        self.secrets = secrets

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for name, value in request_headers(self.cfg, self.secrets).items():
            request.headers[name] = value
        if self.cfg.tls.server_name:
            request.extensions = {**request.extensions, "sni_hostname": self.cfg.tls.server_name}
        yield request


def _client_options(cfg: HTTPClientConfig, secrets: SecretFiles) -> dict[str, Any]:
    """The ``httpx`` client arguments ``cfg`` decides: TLS, auth, proxy, redirects, no env."""
    return {"verify": tls_context(cfg.tls), "auth": _FileAuth(cfg, secrets),
            "proxy": cfg.proxy_url, "follow_redirects": cfg.follow_redirects,
            "trust_env": False}


def make_client(cfg: HTTPClientConfig = DEFAULT_HTTP_CONFIG, *, timeout: float = 10.0,
                max_connections: int = 16, secrets: SecretFiles = SECRETS) -> httpx.Client:
    """The ``httpx.Client`` for ``cfg``: pooled, keep-alive, no environment proxies."""
    return httpx.Client(
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=60),
        **_client_options(cfg, secrets),
    )


def to_prometheus(cfg: HTTPClientConfig) -> dict[str, Any]:
    """The record as the fields of a Prometheus ``scrape_config`` / ``alertmanager_config``
    (file paths only: a secret value is never written)."""
    out: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg.tls, name)
        if value is not None:
            tls[name] = str(value)
    if cfg.tls.server_name:
        tls["server_name"] = cfg.tls.server_name
    if cfg.tls.insecure_skip_verify:
        tls["insecure_skip_verify"] = True
    if cfg.tls.min_version is not ssl.TLSVersion.TLSv1_2:
        tls["min_version"] = "TLS13"
    if tls:
        out["tls_config"] = tls
    if cfg.auth is AuthKind.BASIC:
        basic: dict[str, str] = {"password_file": str(cfg.secret_file)}
        if cfg.username_file is not None:
            basic["username_file"] = str(cfg.username_file)
        else:
            basic["username"] = cfg.username or ""
        out["basic_auth"] = basic
    elif cfg.auth is AuthKind.AUTHORIZATION:
        out["authorization"] = {"type": cfg.auth_type, "credentials_file": str(cfg.secret_file)}
    if cfg.proxy_url:
        out["proxy_url"] = cfg.proxy_url
    if cfg.headers:
        out["http_headers"] = {h.name: {k: v for k, v in (
            ("values", list(h.values)), ("files", [str(f) for f in h.files])) if v}
            for h in cfg.headers}
    if not cfg.follow_redirects:
        out["follow_redirects"] = False
    return out


def referenced_files(cfg: HTTPClientConfig) -> tuple[Path, ...]:
    """Every file ``cfg`` reads: CA, client certificate and key, secrets."""
    tls = tuple(p for p in (cfg.tls.ca_file, cfg.tls.cert_file, cfg.tls.key_file) if p)
    return tls + cfg.secret_files


def make_async_client(cfg: HTTPClientConfig = DEFAULT_HTTP_CONFIG, *,
                      timeout: httpx.Timeout | float = 10.0, max_connections: int = 16,
                      keepalive_expiry: float = 60.0,
                      secrets: SecretFiles = SECRETS) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` for ``cfg`` (the load driver's), like ``make_client``."""
    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections,
                            max_keepalive_connections=max_connections,
                            keepalive_expiry=keepalive_expiry),
        **_client_options(cfg, secrets),
    )


def health_probe(cfg: HTTPClientConfig = DEFAULT_HTTP_CONFIG,
                 timeout: float = 2.0) -> Callable[[str], bool]:
    """``probe(url) -> bool``: whether ``url`` answers 200 under ``cfg`` (a canary's /health)."""

    def probe(url: str) -> bool:
        try:
            with make_client(cfg, timeout=timeout, max_connections=1) as client:
                return client.get(url).status_code == 200
        except (httpx.HTTPError, SecretFileError):
            return False

    return probe
