"""A registry that requires a TLS client certificate (mutual TLS), as in certs.d.

docker-registry with `http.tls.clientcas` refuses a handshake without a
certificate its CA signed.  The certs dir holds, per `host:port`, the CA
(`*.crt`) and the client pair (`*.cert` + `*.key`), the layout Docker and
containers-certs.d(5) use.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from corral.images.errors import RegistryUnavailable
from corral.images.pull import Puller
from corral.images.registries import RegistryConfig
from corral.images.service import ImageService
from tests.integration.layer_trees import LayoutWriter, mounted_image
from tests.integration.registry_server import Registry
from tests.integration.test_registry_auth import certificate, pem


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    base = tmp_path_factory.mktemp("mtls")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = certificate(ca_key, "corral mTLS test CA", ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = certificate(server_key, "127.0.0.1", ca=False, issuer=ca, issuer_key=ca_key,
                         san="127.0.0.1")
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client = certificate(client_key, "corral client", ca=False, issuer=ca, issuer_key=ca_key)
    files = {"ca.crt": pem(ca), "server.crt": pem(server), "server.key": key_pem(server_key),
             "client.cert": pem(client), "client.key": key_pem(client_key)}
    for name, data in files.items():
        (base / name).write_bytes(data)
    registry = Registry(str(base / "registry"), tls=(str(base / "server.crt"),
                                                     str(base / "server.key")),
                        extra_config=f"    clientcas:\n      - {base / 'ca.crt'}\n")
    layout = LayoutWriter(str(base / "layout"))
    try:
        # skopeo pushes with the same certs dir layout
        push_certs = base / "push-certs"
        push_certs.mkdir()
        for name in ("ca.crt", "client.cert", "client.key"):
            (push_certs / name).write_bytes(files[name])
        subprocess.run(["skopeo", "copy", "-q", f"--dest-cert-dir={push_certs}",
                        "oci:" + layout.finish(layout.image([([
                            {"name": "etc", "type": "dir", "mode": 0o755},
                            {"name": "etc/hello", "data": b"over mutual TLS\n"}], "gzip")])),
                        f"docker://{registry.host}/secure/app:latest"],
                       check=True, capture_output=True, timeout=120)
        yield registry, files
    finally:
        registry.stop()


def config_for(tmp_path, host: str, files: dict, names: tuple[str, ...]) -> RegistryConfig:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = false\n')
    certs = tmp_path / "certs.d" / host
    certs.mkdir(parents=True)
    for name in names:
        (certs / name).write_bytes(files[name])
    return RegistryConfig.load(registries_conf=str(conf), certs_dir=str(tmp_path / "certs.d"))


def pull(root: str, ref: str, config: RegistryConfig):
    service = ImageService(root)
    puller = Puller(service, config)
    try:
        record = puller.pull(ref)
        with mounted_image(service, record.name) as rootfs:
            with open(os.path.join(rootfs, "etc", "hello"), "rb") as f:
                assert f.read() == b"over mutual TLS\n"
        return record
    finally:
        puller.close()
        for record in service.list():
            service.remove(record.name, force=True)
        service.close()


def test_client_certificate_from_the_certs_dir(mtls, tmp_path):
    registry, files = mtls
    config = config_for(tmp_path, registry.host, files, ("ca.crt", "client.cert", "client.key"))
    record = pull(str(tmp_path / "root"), f"{registry.host}/secure/app", config)
    assert record.name == f"{registry.host}/secure/app:latest"


def test_without_a_client_certificate_the_handshake_fails_clearly(mtls, tmp_path):
    registry, files = mtls
    config = config_for(tmp_path, registry.host, files, ("ca.crt",))
    with pytest.raises(RegistryUnavailable,
                       match=rf"{registry.host}: .*client.cert and client.key"):
        pull(str(tmp_path / "root"), f"{registry.host}/secure/app", config)
    leftovers = ImageService(str(tmp_path / "root"))
    try:
        assert leftovers.list() == [] and leftovers.content.digests() == []
    finally:
        leftovers.close()
