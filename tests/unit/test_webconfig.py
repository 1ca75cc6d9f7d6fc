"""--web.config.file parsing (exporter-toolkit format), TLS contexts from openssl-made files,
bcrypt checks of htpasswd-made hashes, and reloads that keep the old config on a bad file."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
import time

import pytest

from exporter.webconfig import (
    Authenticator,
    LiveWebConfig,
    WebConfigError,
    load_web_config,
    parse_basic_auth,
    parse_web_config,
    peer_sans,
)
from tests.tls import bcrypt_hash, client_context, make_ca, make_cert, serial_of

HASH = "$2y$10$e53WoZ1qoyqqtKK7Vtz1i.xF0wwYIlJU1luNCXlDh5wZkx6VoiJly"  # htpasswd -nbBC 10 "" secret


def test_empty_file_is_plain_http_without_auth():
    for text in ("", "{}\n", "tls_server_config: {}\nbasic_auth_users:\n"):
        config = parse_web_config(text)
        assert config.tls is None and config.users == {} and config.headers == {}


def test_full_toolkit_file():
    config = parse_web_config(
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: /etc/tls/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [prometheus.example]
  min_version: TLS13
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  prometheus: '{HASH}'
""",
        base_dir="/etc/netstack",
    )
    tls = config.tls
    assert tls.cert_file == "/etc/netstack/server.crt"  # relative to the file's directory
    assert tls.key_file == "/etc/tls/server.key"
    assert tls.client_ca_file == "/etc/netstack/ca.crt"
    assert tls.verify_mode == ssl.CERT_REQUIRED
    assert (tls.min_version, tls.max_version) == ("TLS13", "TLS13")
    assert tls.client_allowed_sans == ("prometheus.example",)
    assert tls.prefer_server_cipher_suites is False
    assert config.users == {"prometheus": HASH.encode()}
    # a blank header value means unset, as in the toolkit
    assert config.headers == {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=31536000",
    }
    assert config.http2 is False


TLS = "tls_server_config:\n  cert_file: a\n  key_file: b\n"
COST3 = "$2y$03$e53WoZ1qoyqqtKK7Vtz1i.xF0wwYIlJU1luNCXlDh5wZkx6VoiJly"


@pytest.mark.parametrize(
    "text, message",
    [
        (TLS + "  cert_fil: c\n", "tls_server_config.cert_fil: unknown key"),
        ("basic_auth_user:\n  a: b\n", "basic_auth_user: unknown key"),
        ("tls_server_config:\n  cert_file: a\n", "tls_server_config.key_file: required"),
        ("tls_server_config:\n  min_version: TLS12\n", "tls_server_config.cert_file: required"),
        (TLS + "  min_version: TLS14\n", "unknown TLS version 'TLS14'"),
        (
            TLS + "  min_version: TLS13\n  max_version: TLS12\n",
            "min_version TLS13 is above max_version TLS12",
        ),
        (TLS + "  client_auth_type: Maybe\n", "unknown client auth type 'Maybe'"),
        (TLS + "  client_auth_type: RequireAnyClientCert\n", "never verified) is not supported"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file: required"),
        (TLS + "  client_ca_file: ca\n", "client CA given but client_auth_type is NoClientCert"),
        (TLS + "  client_allowed_sans: [x]\n", "needs client_auth_type"),
        (TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "unknown cipher"),
        (TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n", "must be a list"),
        (TLS + "  curve_preferences: [X25519]\n", "cannot set a list of curves"),
        ("tls_server_config:\n  cert: PEM\n  key_file: b\n", "inline certificates are not supported"),
        ("tls_server_config:\n  cert_file: ''\n  key_file: b\n", "must not be empty"),
        ("tls_server_config:\n  cert_file: 5\n  key_file: b\n", "must be a string"),
        ("rate_limit:\n  burst: 1\n", "--web.max-requests"),
        ("basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice: not a bcrypt hash"),
        (f"basic_auth_users:\n  alice: '{COST3}'\n", "cost 03 out of range"),
        ("basic_auth_users:\n  'a:b': '" + HASH + "'\n", "without ':'"),
        ("basic_auth_users: [alice]\n", "basic_auth_users: must be a mapping"),
        ("http_server_config:\n  headers:\n    Server: x\n", "this header cannot be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "invalid value 'allow'"),
        ("http_server_config:\n  http2: maybe\n", "must be true or false"),
        (
            'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
            "line breaks",
        ),
        ("basic_auth_users:\n  a: '" + HASH + "'\n  a: '" + HASH + "'\n", "key 'a' given twice"),
        ("tls_server_config: [\n", "not valid YAML"),
        ("- 1\n", "the file: must be a mapping"),
    ],
)
def test_bad_files_name_the_key(text, message):
    with pytest.raises(WebConfigError) as e:
        parse_web_config(text)
    assert message in str(e.value)


def test_basic_auth_header_parsing():
    token = base64.b64encode(b"alice:pa:ss").decode()
    assert parse_basic_auth(f"Basic {token}") == ("alice", "pa:ss")
    assert parse_basic_auth(f"basic {token}") == ("alice", "pa:ss")
    for bad in (
        None,
        "",
        "Bearer x",
        "Basic !!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ):
        assert parse_basic_auth(bad) is None


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_authenticator_checks_htpasswd_hashes_and_caches():
    hashed = bcrypt_hash("s3cret", cost=5)
    auth = Authenticator({"prometheus": hashed.encode()})

    async def check():
        assert await auth.authorized(_basic("prometheus", "s3cret"))
        assert not await auth.authorized(_basic("prometheus", "wrong"))
        assert not await auth.authorized(_basic("nobody", "s3cret"))
        assert not await auth.authorized(None)
        assert not await auth.authorized(_basic("prometheus", "x" * 100))  # past bcrypt's 72 bytes
        start = time.perf_counter()
        for _ in range(20):
            assert await auth.authorized(_basic("prometheus", "s3cret"))
        return time.perf_counter() - start

    cached = asyncio.run(check())
    assert cached < 0.05, f"20 cached checks took {cached:.3f}s: the cache is not used"
    assert asyncio.run(Authenticator({}).authorized(None))  # no users: no auth


def test_unknown_user_costs_a_bcrypt_check_too():
    auth = Authenticator({"prometheus": bcrypt_hash("s3cret", cost=10).encode()})

    async def timed(header):
        start = time.perf_counter()
        await auth.authorized(header)
        return time.perf_counter() - start

    known = asyncio.run(timed(_basic("prometheus", "guess1")))
    unknown = asyncio.run(timed(_basic("mallory", "guess1")))
    assert unknown > known / 3, (known, unknown)  # both pay for a cost-10 hash


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path, "ca")
    other_ca = make_ca(tmp_path, "other-ca")
    return {
        "dir": tmp_path,
        "ca": ca,
        "other_ca": other_ca,
        "server": make_cert(ca, tmp_path, "server"),
        "server2": make_cert(ca, tmp_path, "server2"),
        "client": make_cert(ca, tmp_path, "client", sans="DNS:prometheus.example"),
        "other_client": make_cert(other_ca, tmp_path, "other-client"),
    }


def write_config(pki, name="web.yml", **extra) -> str:
    lines = [
        "tls_server_config:",
        f"  cert_file: {pki['server'].cert.name}",
        f"  key_file: {pki['server'].key.name}",
    ]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    path = pki["dir"] / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_load_reports_file_problems(pki):
    path = write_config(pki)
    assert load_web_config(path).context is not None
    (pki["dir"] / "bad.yml").write_text(
        f"tls_server_config:\n  cert_file: missing.crt\n  key_file: {pki['server'].key}\n"
    )
    with pytest.raises(WebConfigError, match=r"missing\.crt"):
        load_web_config(str(pki["dir"] / "bad.yml"))
    # certificate and key that do not belong together
    (pki["dir"] / "mix.yml").write_text(
        f"tls_server_config:\n  cert_file: {pki['server'].cert}\n  key_file: {pki['client'].key}\n"
    )
    with pytest.raises(WebConfigError, match="cannot load cert_file"):
        load_web_config(str(pki["dir"] / "mix.yml"))
    (pki["dir"] / "junk.pem").write_text("not a certificate\n")
    bad_ca = write_config(
        pki, "ca.yml", client_auth_type="RequireAndVerifyClientCert", client_ca_file="junk.pem"
    )
    with pytest.raises(WebConfigError, match="client CA"):
        load_web_config(bad_ca)
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(str(pki["dir"] / "absent.yml"))


class TLSServer:
    """An asyncio TLS server on the LiveWebConfig's context, in a thread, answering 'ok'."""

    def __init__(self, live: LiveWebConfig):
        self.live = live
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def handle(reader, writer):
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=live.ssl_context)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.Event().wait()

        def run():
            try:
                self.loop.run_until_complete(main())
            except asyncio.CancelledError:
                pass

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def reload(self) -> bool:
        return asyncio.run_coroutine_threadsafe(self.live.reload_async("test"), self.loop).result(10)

    def connect(self, ca, client=None) -> str:
        """The server certificate's serial number, or the exception's class name."""
        ctx = client_context(ca, client)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=5) as s,
                ctx.wrap_socket(s, server_hostname="localhost") as t,
            ):
                # TLS 1.3: a refused client certificate shows up at the first read
                if t.recv(2) != b"ok":
                    return "closed"
                return t.getpeercert()["serialNumber"]
        except (ssl.SSLError, OSError) as e:
            return type(e).__name__

    def stop(self):
        self.loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(self.loop)])
        self.thread.join(5)


def test_reload_rotates_certificate_and_client_ca(pki):
    path = write_config(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file="ca.crt")
    live = LiveWebConfig(path)
    server = TLSServer(live)
    try:
        assert server.connect(pki["ca"], pki["client"]) == serial_of(pki["server"])
        assert server.connect(pki["ca"]) != serial_of(pki["server"])  # no client certificate
        assert server.connect(pki["ca"], pki["other_client"]) != serial_of(pki["server"])

        # new server certificate and a different client CA
        pki["dir"].joinpath("web.yml").write_text(
            "tls_server_config:\n  cert_file: server2.crt\n  key_file: server2.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: other-ca.crt\n"
        )
        assert live.changed()
        assert server.reload()
        assert server.connect(pki["ca"], pki["other_client"]) == serial_of(pki["server2"])
        assert server.connect(pki["ca"], pki["client"]) != serial_of(pki["server2"])  # old CA is gone

        # client certificates turned off: a client without one gets in
        pki["dir"].joinpath("web.yml").write_text(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        )
        assert server.reload()
        assert server.connect(pki["ca"]) == serial_of(pki["server"])
    finally:
        server.stop()


def test_bad_reload_keeps_the_old_config(pki, caplog):
    path = write_config(pki)
    live = LiveWebConfig(path)
    server = TLSServer(live)
    try:
        good = serial_of(pki["server"])
        pki["dir"].joinpath("web.yml").write_text(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: nope.key\n"
        )
        assert not server.reload()
        failed = [r for r in caplog.records if "keeping the previous one" in r.getMessage()]
        assert len(failed) == 1 and "nope.key" in failed[0].kv["error"]
        assert server.connect(pki["ca"]) == good
        assert not live.changed()  # the failure is logged once per change, not per poll
        # turning TLS off at run time is refused too
        pki["dir"].joinpath("web.yml").write_text("basic_auth_users: {}\n")
        assert not server.reload()
        assert "needs a restart" in caplog.records[-1].kv["error"]
        assert server.connect(pki["ca"]) == good and live.tls
    finally:
        server.stop()


def test_rewritten_certificate_is_noticed(pki):
    live = LiveWebConfig(write_config(pki))
    assert not live.changed()
    new = make_cert(pki["ca"], pki["dir"], "fresh")
    pki["server"].cert.write_bytes(new.cert.read_bytes())
    pki["server"].key.write_bytes(new.key.read_bytes())
    assert live.changed()
    assert live.reload("test")
    assert not live.changed()


def test_peer_sans():
    cert = {"subjectAltName": (("DNS", "prometheus.example"), ("IP Address", "198.18.0.1"))}
    assert peer_sans(cert) == {"prometheus.example", "198.18.0.1"}
    assert peer_sans(None) == set()


def _negotiated(server: TLSServer, ca, maximum=None) -> tuple[str, str] | str:
    ctx = client_context(ca)
    if maximum is not None:
        ctx.maximum_version = maximum
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as s,
            ctx.wrap_socket(s, server_hostname="localhost") as t,
        ):
            cipher = t.cipher()
            return t.version(), cipher[0] if cipher else ""
    except (ssl.SSLError, OSError) as e:
        return type(e).__name__


def test_versions_and_cipher_suites_are_enforced(pki):
    path = write_config(pki, max_version="TLS12", cipher_suites="[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]")
    server = TLSServer(LiveWebConfig(path))
    try:
        assert _negotiated(server, pki["ca"]) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    finally:
        server.stop()
    server = TLSServer(LiveWebConfig(write_config(pki, "v13.yml", min_version="TLS13")))
    try:
        assert _negotiated(server, pki["ca"])[0] == "TLSv1.3"
        assert _negotiated(server, pki["ca"], ssl.TLSVersion.TLSv1_2) in ("SSLError", "SSLEOFError")
    finally:
        server.stop()
