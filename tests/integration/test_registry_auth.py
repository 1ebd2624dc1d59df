"""Bearer token auth (a small token server) and TLS registries (CA files, insecure)."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import threading
import time
import uuid
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from corral.images.errors import RegistryUnavailable, Unauthenticated
from corral.images.pull import Puller
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from tests.integration.registry_server import Registry, layered_image

SERVICE = "corral-test-registry"
ISSUER = "corral-test-issuer"


def certificate(key, common_name: str, *, ca: bool, issuer=None, issuer_key=None,
                san: str | None = None):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(san))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs with an x5c header, as docker/distribution's token auth expects:
    anonymous callers may pull, alice:s3cret may push too."""

    def __init__(self, base: str):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert = certificate(self.key, "token-signer", ca=False)
        self.bundle = os.path.join(base, "token-ca.pem")
        with open(self.bundle, "wb") as f:
            f.write(pem(self.cert))
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = parse_qs(urlparse(self.path).query)
                user = server.user(self.headers.get("Authorization", ""))
                server.requests.append({"scope": query.get("scope", [""])[0], "user": user})
                if user == "bad":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query, user), "expires_in": 300})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def user(header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, password) == ("alice", "s3cret") else "bad"

    def token(self, query: dict, user: str | None) -> str:
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            allowed = [a for a in actions.split(",") if a == "pull" or user == "alice"]
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [
            base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}." \
                        f"{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("layout") / "image")
    layered_image(path, marker=b"amd64")
    return path


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory, layout):
    base = str(tmp_path_factory.mktemp("token"))
    tokens = TokenServer(base)
    auth = (f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.bundle}\n")
    registry = Registry(os.path.join(base, "registry"), extra_config=auth)
    registry.credentials = ("alice", "s3cret")
    try:
        registry.push(layout, "team/app")
        tokens.requests.clear()
        yield registry, tokens
    finally:
        registry.stop()
        tokens.stop()


def pull(root: str, ref: str, config: RegistryConfig | None = None, **options):
    service = ImageService(root)
    puller = Puller(service, config or RegistryConfig())
    try:
        return puller.pull(ref, **options)
    finally:
        puller.close()
        service.close()


def test_bearer_token_anonymous_pull_with_cached_token(token_registry, tmp_path):
    registry, tokens = token_registry
    record = pull(str(tmp_path / "root"), f"{registry.host}/team/app")
    assert record.platform == "linux/amd64"
    scopes = [r["scope"] for r in tokens.requests]
    assert scopes == ["repository:team/app:pull"]  # one token, reused for every request


def test_bearer_token_with_credentials(token_registry, tmp_path):
    registry, tokens = token_registry
    tokens.requests.clear()
    pull(str(tmp_path / "root"), f"{registry.host}/team/app", credentials=("alice", "s3cret"))
    assert [r["user"] for r in tokens.requests] == ["alice"]
    with pytest.raises(Unauthenticated, match="refused the credentials"):
        pull(str(tmp_path / "other"), f"{registry.host}/team/app",
             credentials=("alice", "wrong"))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory, layout):
    base = str(tmp_path_factory.mktemp("tls"))
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = certificate(ca_key, "corral test CA", ca=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = certificate(key, "127.0.0.1", ca=False, issuer=ca, issuer_key=ca_key,
                       san="127.0.0.1")
    paths = {name: os.path.join(base, name) for name in ("ca.crt", "server.crt", "server.key")}
    with open(paths["ca.crt"], "wb") as f:
        f.write(pem(ca))
    with open(paths["server.crt"], "wb") as f:
        f.write(pem(cert))
    with open(paths["server.key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    registry = Registry(os.path.join(base, "registry"),
                        tls=(paths["server.crt"], paths["server.key"]))
    try:
        registry.push(layout, "secure/app")
        yield registry, paths["ca.crt"], base
    finally:
        registry.stop()


def registries_conf(tmp_path, host: str, insecure: bool) -> str:
    path = tmp_path / "registries.conf"
    path.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = {str(insecure).lower()}\n')
    return str(path)


def test_tls_registry_needs_its_ca(tls_registry, tmp_path):
    registry, ca_file, _ = tls_registry
    conf = registries_conf(tmp_path, registry.host, insecure=False)
    with pytest.raises(RegistryUnavailable, match=r"CERTIFICATE_VERIFY_FAILED.*certs.d/.*ca.crt"):
        pull(str(tmp_path / "a"), f"{registry.host}/secure/app",
             RegistryConfig.load(registries_conf=conf))
    certs = tmp_path / "certs.d" / registry.host
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(open(ca_file, "rb").read())
    record = pull(str(tmp_path / "b"), f"{registry.host}/secure/app",
                  RegistryConfig.load(registries_conf=conf, certs_dir=str(tmp_path / "certs.d")))
    assert record.platform == "linux/amd64"


def test_insecure_registry_skips_verification(tls_registry, tmp_path):
    registry, _, _ = tls_registry
    conf = registries_conf(tmp_path, registry.host, insecure=True)
    record = pull(str(tmp_path / "root"), f"{registry.host}/secure/app",
                  RegistryConfig.load(registries_conf=conf))
    assert record.name == f"{registry.host}/secure/app:latest"
