"""TLS and basic-auth material for tests, made by the real tools: certificates by `openssl`,
bcrypt hashes by `htpasswd -B` (Debian apache2-utils), the format exporter-toolkit users have."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import Exporter, need_tool


@dataclass
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run([need_tool("openssl", "openssl"), *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "ca") -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(pair.key),
        "-out",
        str(pair.cert),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    return pair


def make_cert(
    ca: Pair,
    directory: Path,
    name: str,
    sans: str = "DNS:localhost,IP:127.0.0.1",
    usage: str = "serverAuth,clientAuth",
) -> Pair:
    """A leaf certificate for `name` signed by `ca`, with the given subjectAltNames."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage={usage}\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(pair.key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        str(pair.cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return pair


def bcrypt_hash(password: str, cost: int = 10) -> str:
    """`htpasswd -nbBC cost "" password`, as the exporter-toolkit docs suggest."""
    out = subprocess.run(
        [need_tool("htpasswd", "apache2-utils"), "-nbBC", str(cost), "", password],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().lstrip(":")


def client_context(ca: Pair | None, client: Pair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert)) if ca else ssl._create_unverified_context()
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def https_get(
    port: int,
    path: str = "/metrics",
    ctx: ssl.SSLContext | None = None,
    headers: dict | None = None,
    timeout: float = 10,
) -> tuple[int, dict, bytes, dict]:
    """(status, headers, body, server certificate) of one HTTPS GET to 127.0.0.1."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        peer = conn.sock.getpeercert() if conn.sock else {}
        return response.status, dict(response.getheaders()), body, peer or {}
    finally:
        conn.close()


def serial_of(pair: Pair) -> str:
    out = subprocess.run(
        [need_tool("openssl", "openssl"), "x509", "-noout", "-serial", "-in", str(pair.cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().split("=", 1)[1].upper()


def write_web_config(
    path: Path,
    *,
    pair: Pair | None = None,
    client_ca: Pair | None = None,
    users: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Path:
    lines = []
    if pair is not None:
        lines += ["tls_server_config:", f"  cert_file: {pair.cert}", f"  key_file: {pair.key}"]
        if client_ca is not None:
            lines += ["  client_auth_type: RequireAndVerifyClientCert", f"  client_ca_file: {client_ca.cert}"]
    if users:
        lines += ["basic_auth_users:"] + [f"  {u}: '{h}'" for u, h in users.items()]
    if headers:
        lines += ["http_server_config:", "  headers:"] + [f"    {k}: {v}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class TLSExporter(Exporter):
    """The exporter with --web.config.file, waited for over HTTPS (with credentials if given)."""

    def __init__(
        self,
        *args: str,
        ctx: ssl.SSLContext | None = None,
        headers: dict | None = None,
        prefix: tuple[str, ...] = (),
        **kw,
    ):
        super().__init__(*args, wait_ready=False, **kw)
        self.ctx = ctx
        self.headers = headers or {}
        self.args = [*prefix, *self.args]
        self.url = f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> TLSExporter:
        super().__enter__()
        try:
            self.wait_tls()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_tls(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.log()}")
            try:
                if https_get(self.port, "/readyz", self.ctx, self.headers, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready over TLS after {timeout}s: {self.log()}")

    def get_tls(self, path: str = "/metrics", headers: dict | None = None, ctx=None):
        return https_get(self.port, path, ctx or self.ctx, {**self.headers, **(headers or {})})
