"""--web.config.file: TLS, basic auth and response headers, in the Prometheus exporter-toolkit's
YAML format (the file node_exporter's --web.config.file reads), so one file serves both.

Supported and unsupported parts of the format are listed in docs/security.md. The rules:
- an unknown key, a wrong type or a bad value is an error naming the key (startup: exit 2);
- a key of the toolkit's format that Python's ssl module cannot honour is an error too, never
  silently ignored: a security setting that does nothing is worse than a refusal;
- relative file names are relative to the config file's directory, as in the toolkit.

Reloads (LiveWebConfig): on SIGHUP and when the config file or a certificate, key or CA file
changes (stat polled), the file is parsed and every file it names is loaded again; a new config
that fails keeps the old one and logs why. New connections get the new certificate and CA through
the TLS server-name callback, which switches each handshake to the current context.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import logging
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bcrypt

from .logs import log_event

log = logging.getLogger("netstack.web")


class WebConfigError(Exception):
    """The web config file cannot be used; the message names the key or file."""


# --- the format ------------------------------------------------------------------------------

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# client_auth_type values of the toolkit (Go's tls.ClientAuthType names) -> Python's verify mode.
# RequireAnyClientCert (and its old name RequireClientCert) asks for a certificate without
# verifying it: OpenSSL through Python's ssl cannot require a certificate it does not verify.
CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode | None] = {
    "NoClientCert": ssl.CERT_NONE,
    # Go requests a certificate but never checks it; nothing is admitted or refused on it, so
    # not asking for one has the same effect.
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    "RequireAnyClientCert": None,
    "RequireClientCert": None,
}
VERIFYING = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")

# The cipher suites the toolkit accepts (Go's tls.CipherSuites(): the ones without known
# weaknesses), by IANA name -> OpenSSL name. TLS 1.3 suites cannot be chosen in Go nor in
# Python's ssl; their names are accepted and change nothing, as in the toolkit.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}

# http_server_config.headers: the toolkit allows only these, some with a fixed set of values.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

# Keys of the toolkit's format that this implementation refuses, and why.
UNSUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.curve_preferences": "Python's ssl module cannot set a list of curves; remove it (OpenSSL's defaults are used)",
    "rate_limit": "not supported; use --web.max-requests to bound concurrent requests",
}

# $2a$, $2b$ and $2y$ (htpasswd -B) bcrypt hashes: cost, then 22 characters of salt and 31 of hash.
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = None  # inline PEM
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        assert mode is not None  # refused when parsed
        return mode

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


@dataclass(frozen=True)
class WebConfig:
    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    http2: bool = True  # accepted for compatibility; responses are HTTP/1.1 either way


@functools.cache
def _strict_loader() -> type:
    """A SafeLoader that refuses a key given twice in one mapping (Go's strict YAML does too).
    PyYAML is imported only when a web config is read: most nodes run without one."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                raise WebConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice")
            seen.add(key)
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise WebConfigError(f"{where}: keys must be strings, got {key!r}")
    return value


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    for key in section:
        path = f"{where}.{key}" if where else key
        if path in UNSUPPORTED:
            raise WebConfigError(f"{path}: {UNSUPPORTED[path]}")
        if key not in allowed:
            raise WebConfigError(f"{path}: unknown key (known: {', '.join(sorted(allowed))})")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise WebConfigError(f"{where}: must be a string, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WebConfigError(f"{where}: must be a list of strings")
    return tuple(_string(v, f"{where}[{i}]") for i, v in enumerate(value))


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise WebConfigError(f"{where}: must be true or false, got {value!r}")
    return value


def _one_of(value: Any, choices, where: str, what: str) -> str:
    text = _string(value, where)
    if text not in choices:
        raise WebConfigError(f"{where}: unknown {what} {text!r} (one of {', '.join(choices)})")
    return text


def _path(value: Any, base_dir: str, where: str) -> str:
    text = _string(value, where)
    if not text:
        raise WebConfigError(f"{where}: must not be empty")
    return os.path.join(base_dir, text)


def _parse_tls(raw: dict, base_dir: str) -> TLSSettings | None:
    where = "tls_server_config"
    _check_keys(
        raw,
        {
            "cert_file",
            "key_file",
            "client_auth_type",
            "client_ca_file",
            "client_ca",
            "client_allowed_sans",
            "min_version",
            "max_version",
            "cipher_suites",
            "prefer_server_cipher_suites",
        },
        where,
    )
    if not raw:
        return None
    kw: dict[str, Any] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if raw.get(key) is not None:
            kw[key] = _path(raw[key], base_dir, f"{where}.{key}")
    for key in ("cert_file", "key_file"):
        if key not in kw:
            raise WebConfigError(f"{where}.{key}: required when tls_server_config is given")
    if raw.get("client_ca") is not None:
        kw["client_ca"] = _string(raw["client_ca"], f"{where}.client_ca")
        if "client_ca_file" in kw:
            raise WebConfigError(f"{where}: give client_ca or client_ca_file, not both")
    if raw.get("client_auth_type") is not None:
        kw["client_auth_type"] = auth = _one_of(
            raw["client_auth_type"], list(CLIENT_AUTH_TYPES), f"{where}.client_auth_type", "client auth type"
        )
        if CLIENT_AUTH_TYPES[auth] is None:
            raise WebConfigError(
                f"{where}.client_auth_type: {auth} (a certificate required but never verified) "
                "is not supported; use RequireAndVerifyClientCert with client_ca_file"
            )
    auth = kw.get("client_auth_type", "NoClientCert")
    has_ca = "client_ca_file" in kw or "client_ca" in kw
    if has_ca and auth not in VERIFYING:
        raise WebConfigError(
            f"{where}: client CA given but client_auth_type is {auth}: "
            "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
        )
    if auth in VERIFYING and not has_ca:
        # The toolkit would fall back to the system's public CAs: anyone with a certificate
        # from any public CA would get in. Refused.
        raise WebConfigError(f"{where}.client_ca_file: required with client_auth_type {auth}")
    if raw.get("client_allowed_sans") is not None:
        kw["client_allowed_sans"] = _strings(raw["client_allowed_sans"], f"{where}.client_allowed_sans")
        if auth != "RequireAndVerifyClientCert":
            raise WebConfigError(
                f"{where}.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert"
            )
    for key in ("min_version", "max_version"):
        if raw.get(key) is not None:
            kw[key] = _one_of(raw[key], list(TLS_VERSIONS), f"{where}.{key}", "TLS version")
    settings = TLSSettings(**kw, **_parse_ciphers(raw, where))
    if TLS_VERSIONS[settings.min_version] > TLS_VERSIONS[settings.max_version]:
        raise WebConfigError(
            f"{where}: min_version {settings.min_version} is above max_version {settings.max_version}"
        )
    return settings


def _parse_ciphers(raw: dict, where: str) -> dict:
    out: dict[str, Any] = {}
    if raw.get("cipher_suites") is not None:
        names = _strings(raw["cipher_suites"], f"{where}.cipher_suites")
        for i, name in enumerate(names):
            if name not in CIPHER_SUITES:
                raise WebConfigError(
                    f"{where}.cipher_suites[{i}]: unknown cipher {name!r} (one of {', '.join(CIPHER_SUITES)})"
                )
        out["cipher_suites"] = names
    if raw.get("prefer_server_cipher_suites") is not None:
        out["prefer_server_cipher_suites"] = _bool(
            raw["prefer_server_cipher_suites"], f"{where}.prefer_server_cipher_suites"
        )
    return out


def _parse_users(raw: dict) -> dict[str, bytes]:
    users = {}
    for user, hashed in raw.items():
        where = f"basic_auth_users.{user}"
        if ":" in user or not user:
            raise WebConfigError(f"{where}: a user name must be non-empty and without ':'")
        text = _string(hashed, where)
        m = _BCRYPT.match(text)
        if not m:
            raise WebConfigError(f"{where}: not a bcrypt hash ($2y$10$... as made by htpasswd -nB)")
        if not 4 <= int(m.group(1)) <= 31:
            raise WebConfigError(f"{where}: bcrypt cost {m.group(1)} out of range 4..31")
        users[user] = text.encode()
    return users


def _parse_http(raw: dict) -> tuple[dict[str, str], bool]:
    where = "http_server_config"
    _check_keys(raw, {"headers", "http2"}, where)
    http2 = _bool(raw["http2"], f"{where}.http2") if raw.get("http2") is not None else True
    headers = {}
    for name, value in _mapping(raw.get("headers"), f"{where}.headers").items():
        hwhere = f"{where}.headers.{name}"
        if name not in HEADERS:
            raise WebConfigError(f"{hwhere}: this header cannot be configured (one of {', '.join(HEADERS)})")
        text = _string(value, hwhere)
        if HEADERS[name] and text not in HEADERS[name]:
            raise WebConfigError(f"{hwhere}: invalid value {text!r} (one of {', '.join(HEADERS[name])})")
        if "\r" in text or "\n" in text:
            raise WebConfigError(f"{hwhere}: line breaks are not allowed in a header value")
        if text:  # blank means unset, as in the toolkit
            headers[name] = text
    return headers, http2


def parse_web_config(text: str, base_dir: str = ".") -> WebConfig:
    """The file's content -> WebConfig. Checks structure and values; reads no other file."""
    import yaml

    try:
        raw = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as e:
        raise WebConfigError(f"not valid YAML: {e}") from None
    top = _mapping(raw, "the file")
    _check_keys(top, {"tls_server_config", "basic_auth_users", "http_server_config"}, "")
    tls = _parse_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), base_dir)
    users = _parse_users(_mapping(top.get("basic_auth_users"), "basic_auth_users"))
    headers, http2 = _parse_http(_mapping(top.get("http_server_config"), "http_server_config"))
    return WebConfig(tls=tls, users=users, headers=headers, http2=http2)


# --- TLS contexts ----------------------------------------------------------------------------


def _refuse_password() -> bytes:
    # Without this OpenSSL would prompt for the pass phrase on the terminal.
    raise WebConfigError("key_file is encrypted; give an unencrypted key (chmod 600)")


def apply_tls_settings(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    """Everything but the certificate and the CAs: versions, ciphers, client verification."""
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    ctx.verify_mode = tls.verify_mode
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    names = [name for c in tls.cipher_suites if (name := CIPHER_SUITES[c])]
    if names:
        try:
            ctx.set_ciphers(":".join(names))
        except ssl.SSLError as e:
            raise WebConfigError(f"tls_server_config.cipher_suites: OpenSSL refuses them: {e}") from None


def build_tls_context(tls: TLSSettings) -> ssl.SSLContext:
    """A server context with the certificate, key and client CAs loaded from their files now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_tls_settings(ctx, tls)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
    except ssl.SSLError as e:  # before OSError: SSLError is one
        raise WebConfigError(
            f"cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: {e.reason or e}"
        ) from None
    except OSError as e:
        what = tls.cert_file if not os.path.exists(tls.cert_file) else tls.key_file
        raise WebConfigError(f"cannot read cert_file/key_file ({what}): {e.strerror or e}") from None
    if tls.client_ca_file or tls.client_ca:
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=tls.client_ca)
        except ssl.SSLError as e:
            raise WebConfigError(f"client CA: no usable certificate ({e.reason or e})") from None
        except OSError as e:
            raise WebConfigError(
                f"cannot read client_ca_file {tls.client_ca_file}: {e.strerror or e}"
            ) from None
        if not ctx.get_ca_certs():
            raise WebConfigError("client CA: no certificate found")
    return ctx


def peer_sans(cert: dict | None) -> set[str]:
    """The subjectAltName values of a verified peer certificate (getpeercert() form)."""
    if not cert:
        return set()
    return {value for _, value in cert.get("subjectAltName", ())}


# --- basic auth ------------------------------------------------------------------------------


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Checks basic-auth credentials against bcrypt hashes.

    A bcrypt check is slow by design (bench/README.md), so: checks run on a thread, one at a time
    (a flood of guesses uses at most one core), and outcomes are cached by a digest of
    (user, hash, password) so Prometheus, sending the same credentials every scrape, pays once.
    An unknown user is checked against a dummy hash of the same cost: timing does not tell
    which users exist."""

    CACHE = 256

    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock: asyncio.Lock | None = None
        cost = int(next(iter(users.values()))[4:6]) if users else 10
        self._dummy = bcrypt.hashpw(os.urandom(12), bcrypt.gensalt(cost)) if users else b""

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    @staticmethod
    def _check(hashed: bytes, password: str) -> bool:
        try:
            return bcrypt.checkpw(password.encode(), hashed)
        except ValueError:  # longer than bcrypt's 72 bytes, or a hash it cannot read
            return False

    async def authorized(self, header: str | None) -> bool:
        if not self.users:
            return True
        creds = parse_basic_auth(header)
        if creds is None:
            return False
        user, password = creds
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed or b"", password.encode()))).digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            ok = await asyncio.to_thread(self._check, hashed or self._dummy, password)
        ok = ok and hashed is not None
        self._cache[key] = ok
        while len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return ok


# --- loading and reloading -------------------------------------------------------------------


@dataclass
class Loaded:
    config: WebConfig
    context: ssl.SSLContext | None
    auth: Authenticator
    files: tuple[str, ...]


def load_web_config(path: str) -> Loaded:
    """Read the file and everything it names; WebConfigError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise WebConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not UTF-8 text") from None
    try:
        config = parse_web_config(text, os.path.dirname(os.path.abspath(path)))
        context = build_tls_context(config.tls) if config.tls else None
    except WebConfigError as e:
        raise WebConfigError(f"{path}: {e}") from None
    files = (path,) + (config.tls.files() if config.tls else ())
    return Loaded(config, context, Authenticator(config.users), files)


def _fingerprint(files: tuple[str, ...]) -> tuple:
    """What changes when a file is rewritten or a Kubernetes Secret volume swaps its symlink."""
    out: list[object] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError as e:
            out.append(e.errno)
    return tuple(out)


class LiveWebConfig:
    """The web config in force, reloaded on demand (SIGHUP) or when its files change.

    `ssl_context` is the one context the listener is created with; each handshake switches to
    the newest loaded context in the server-name callback (certificate, key, CAs), and the
    settings that OpenSSL fixes before that callback (versions, ciphers, verify mode) are
    copied onto it at every reload."""

    def __init__(self, path: str, on_reload: Callable[[Loaded], None] | None = None):
        self.path = path
        self.current = load_web_config(path)  # raises WebConfigError: a startup error
        self._fingerprint = _fingerprint(self.current.files)
        self._on_reload = on_reload
        self.reloads = 0
        self.reload_failures = 0
        self.ssl_context: ssl.SSLContext | None = None
        if self.current.context is not None:
            self.ssl_context = self.current.context
            self.ssl_context.sni_callback = self._switch_context

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    def _switch_context(self, sslobj, _server_name, ctx) -> None:
        current = self.current.context
        if current is not None and current is not ctx:
            sslobj.context = current
        return None

    def changed(self) -> bool:
        return _fingerprint(self.current.files) != self._fingerprint

    def _load(self) -> tuple[tuple, Loaded | WebConfigError]:
        """Read everything (blocking: file reads, a bcrypt hash); may run on a thread."""
        fingerprint = _fingerprint(self.current.files)
        try:
            return fingerprint, load_web_config(self.path)
        except WebConfigError as e:
            return fingerprint, e

    def _apply(self, trigger: str, fingerprint: tuple, new: Loaded | WebConfigError) -> bool:
        """Switch to `new` (on the event loop thread, where handshakes happen)."""
        if isinstance(new, Loaded) and (new.context is None) != (self.ssl_context is None):
            new = WebConfigError(
                "turning TLS on or off needs a restart (the listener's scheme "
                "cannot change under connected clients)"
            )
        if isinstance(new, WebConfigError):
            self.reload_failures += 1
            self._fingerprint = fingerprint  # one line per change of the files, not per poll
            log_event(
                log,
                logging.ERROR,
                "web config reload failed; keeping the previous one",
                trigger=trigger,
                error=str(new),
            )
            return False
        if self.ssl_context is not None and new.context is not None and new.config.tls is not None:
            new.context.sni_callback = self._switch_context
            apply_tls_settings(self.ssl_context, new.config.tls)
        self.current = new
        self._fingerprint = _fingerprint(new.files)
        self.reloads += 1
        log_event(
            log,
            logging.INFO,
            "web config loaded",
            trigger=trigger,
            tls=self.tls,
            users=len(new.config.users),
            headers=len(new.config.headers),
        )
        if self._on_reload is not None:
            self._on_reload(new)
        return True

    def reload(self, trigger: str) -> bool:
        """Load the file again; keep the old config when the new one fails. True if applied."""
        return self._apply(trigger, *self._load())

    async def reload_async(self, trigger: str) -> bool:
        return self._apply(trigger, *await asyncio.to_thread(self._load))

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the files' stat every `interval` seconds; reload when one changed."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                await self.reload_async("file change")
