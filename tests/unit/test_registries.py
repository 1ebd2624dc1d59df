"""Registry settings (registries.conf v2, auth files, certs dirs), platforms and auth challenges."""

import base64
import json

import pytest

from corral.images.distribution import _parse_challenge
from corral.images.errors import Blocked, ConfigInvalid
from corral.images.reference import parse
from corral.images.registries import RegistryConfig
from corral.spec.platform import Platform, PlatformError


def conf(tmp_path, text: str) -> RegistryConfig:
    path = tmp_path / "registries.conf"
    path.write_text(text)
    return RegistryConfig.load(registries_conf=str(path))


def describe(endpoints) -> list[tuple]:
    return [(e.host, e.repository, e.schemes, e.mirror) for e in endpoints]


def test_docker_hub_without_config():
    endpoints = RegistryConfig().endpoints(parse("busybox"))
    assert describe(endpoints) == [("registry-1.docker.io", "library/busybox", ("https",), False)]


def test_loopback_is_plain_http_unless_configured(tmp_path):
    for host in ("localhost:5000", "127.0.0.1:5000", "127.3.4.5", "[::1]:5000"):
        assert RegistryConfig().endpoints(parse(f"{host}/app"))[0].schemes == ("http",)
    assert RegistryConfig().endpoints(parse("10.0.0.1:5000/app"))[0].schemes == ("https",)
    configured = conf(tmp_path, '[[registry]]\nlocation = "127.0.0.1:5443"\n')
    assert configured.endpoints(parse("127.0.0.1:5443/app"))[0].schemes == ("https",)


def test_mirrors_come_first_in_order(tmp_path):
    config = conf(tmp_path, """
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5001"
[[registry.mirror]]
location = "mirror.example.com/hub"
insecure = true
""")
    assert describe(config.endpoints(parse("busybox:1.36"))) == [
        ("127.0.0.1:5001", "library/busybox", ("http",), True),  # loopback: plain HTTP
        ("mirror.example.com", "hub/library/busybox", ("https", "http"), True),
        ("registry-1.docker.io", "library/busybox", ("https",), False),
    ]
    assert config.search == ["docker.io"]


def test_prefix_rewrites_location_and_longest_prefix_wins(tmp_path):
    config = conf(tmp_path, """
[[registry]]
prefix = "example.com"
location = "internal.example.net"
[[registry]]
prefix = "example.com/team"
location = "team.example.net/mirror"
insecure = true
[[registry]]
prefix = "*.blocked.io"
blocked = true
""")
    assert describe(config.endpoints(parse("example.com/app"))) == [
        ("internal.example.net", "app", ("https",), False)]
    assert describe(config.endpoints(parse("example.com/team/app"))) == [
        ("team.example.net", "mirror/app", ("https", "http"), False)]
    # "example.com/teamwork" is not under the prefix "example.com/team"
    assert config.endpoints(parse("example.com/teamwork/app"))[0].host == "internal.example.net"
    with pytest.raises(Blocked, match="blocked"):
        config.endpoints(parse("registry.blocked.io/app"))


@pytest.mark.parametrize("text, message", [
    ("[[registry]\n", "not valid TOML"),
    ("[registries.search]\nregistries = []\n", "version 1"),
    ("[[registry]]\ninsecure = true\n", "location or a prefix"),
    ('[[registry]]\nlocation = "a.io"\ninsecure = "yes"\n', r"registry\[0\].insecure"),
    ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\ninsecure = true\n',
     r"mirror\[0\]: needs a location"),
    ('unqualified-search-registries = "docker.io"\n', "list of strings"),
])
def test_bad_registries_conf_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigInvalid, match=message):
        conf(tmp_path, text)


def test_auth_file_longest_key_and_docker_hub_aliases(tmp_path):
    def auth(user, password):
        return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}

    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {
        "registry.example.com": auth("all", "pw1"),
        "registry.example.com/team": auth("team", "pw2"),
        "https://index.docker.io/v1/": auth("hub", "pw3"),
        "other.io": {"username": "plain", "password": "pw4"},
    }}))
    config = RegistryConfig.load(auth_file=str(path))
    assert config.credentials("registry.example.com", "team/app") == ("team", "pw2")
    assert config.credentials("registry.example.com", "teamwork/app") == ("all", "pw1")
    assert config.credentials("registry-1.docker.io", "library/busybox") == ("hub", "pw3")
    assert config.credentials("other.io", "x") == ("plain", "pw4")
    assert config.credentials("nowhere.io", "x") is None


@pytest.mark.parametrize("document, message", [
    ("{", "not JSON"),
    ('{"auths": []}', "'auths' must be an object"),
    ('{"auths": {"a.io": {"auth": "bm9jb2xvbg=="}}}', "base64 of user:password"),
])
def test_bad_auth_file_is_a_clear_error(tmp_path, document, message):
    path = tmp_path / "auth.json"
    path.write_text(document)
    with pytest.raises(ConfigInvalid, match=message):
        RegistryConfig.load(auth_file=str(path))


def test_certs_dir_gives_cas_and_client_cert(tmp_path):
    directory = tmp_path / "certs" / "reg.example.com:5000"
    directory.mkdir(parents=True)
    for name in ("ca.crt", "client.cert", "client.key"):
        (directory / name).write_text("x")
    config = RegistryConfig(certs_dir=str(tmp_path / "certs"))
    endpoint = config.endpoints(parse("reg.example.com:5000/app"))[0]
    assert endpoint.ca_files == [str(directory / "ca.crt")]
    assert endpoint.client_cert == (str(directory / "client.cert"), str(directory / "client.key"))
    (directory / "client.key").unlink()
    with pytest.raises(ConfigInvalid, match="has no client.key"):
        config.endpoints(parse("reg.example.com:5000/app"))


def entry(platform: str, name: str) -> dict:
    os_name, arch, *variant = platform.split("/")
    value = {"os": os_name, "architecture": arch}
    if variant:
        value["variant"] = variant[0]
    return {"digest": name, "platform": value}


INDEX = [entry("linux/arm/v6", "armv6"), entry("linux/amd64", "amd64"),
         entry("linux/arm64/v8", "arm64"), entry("linux/arm/v7", "armv7"),
         entry("windows/amd64", "win")]


@pytest.mark.parametrize("wanted, chosen", [
    ("linux/amd64", "amd64"), ("linux/x86_64", "amd64"), ("linux/arm64", "arm64"),
    ("linux/aarch64", "arm64"), ("linux/arm/v7", "armv7"), ("linux/arm", "armv7"),
    ("linux/arm/v8", "armv7"), ("windows/amd64", "win"), ("linux/s390x", None),
])
def test_platform_choice(wanted, chosen):
    found = Platform.parse(wanted).choose(INDEX)
    assert (found or {}).get("digest") == chosen


def test_older_arm_variant_runs_on_newer():
    assert Platform.parse("linux/arm/v7").choose([entry("linux/arm/v6", "v6")])["digest"] == "v6"
    assert Platform.parse("linux/arm/v6").choose([entry("linux/arm/v7", "v7")]) is None


@pytest.mark.parametrize("text", ["linux", "linux/", "a/b/c/d", ""])
def test_bad_platform(text):
    with pytest.raises(PlatformError):
        Platform.parse(text)


def test_challenge_parsing():
    assert _parse_challenge('Bearer realm="https://auth.io/token",service="reg.io",'
                            'scope="repository:a/b:pull,push"') == (
        "bearer", {"realm": "https://auth.io/token", "service": "reg.io",
                   "scope": "repository:a/b:pull,push"})
    assert _parse_challenge('Basic realm="basic-realm"') == ("basic", {"realm": "basic-realm"})
    assert _parse_challenge("") is None
