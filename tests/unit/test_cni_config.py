"""CNI network configs: which one is used, what is wrong with a bad one, the default."""

import json

import pytest

from corral.network.cni import (
    CNIError,
    Interface,
    Route,
    kubernetes_args,
    load_network,
    parse_network,
    port_mappings,
)
from corral.network.manager import NetworkResult, PodNetwork


def test_first_valid_config_in_lexical_order(tmp_path):
    (tmp_path / "20-b.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}]}))
    (tmp_path / "10-a.conf").write_text(json.dumps(
        {"cniVersion": "0.4.0", "name": "a", "type": "ptp"}))
    (tmp_path / "00-broken.conflist").write_text("{")
    network = load_network(str(tmp_path))
    assert (network.name, network.plugins) == ("a", [{"type": "ptp"}])


@pytest.mark.parametrize("document, message", [
    ("{", "not JSON"),
    ('{"cniVersion": "9.9.9", "name": "x", "plugins": [{"type": "bridge"}]}', "cniVersion"),
    ('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', "no network name"),
    ('{"cniVersion": "1.0.0", "name": "x", "plugins": []}', "non-empty list"),
    ('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"ipam": {}}]}', r"plugins\[0\]"),
])
def test_bad_configs_name_the_file_and_the_problem(document, message):
    with pytest.raises(CNIError, match=f"x.conflist: .*{message}"):
        parse_network(document.encode(), "/etc/cni/net.d/x.conflist")


def test_empty_dir_gets_the_default_conflist(tmp_path):
    conf_dir = tmp_path / "net.d"
    network = PodNetwork(str(conf_dir), ["/usr/lib/cni"], str(tmp_path / "cache"))
    assert network.status() == (True, "")
    (written,) = conf_dir.iterdir()
    assert [p["type"] for p in json.loads(written.read_text())["plugins"]] == [
        "bridge", "portmap"]


def test_missing_plugin_makes_the_network_not_ready(tmp_path):
    (tmp_path / "10.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-plugin"}]}))
    ready, message = PodNetwork(str(tmp_path), ["/usr/lib/cni"], str(tmp_path)).status()
    assert not ready and "no-such-plugin" in message


def test_pod_ip_is_the_first_ipv4():
    result = NetworkResult({"ips": [{"address": "fd00::5/64"}, {"address": "10.1.2.3/24"}]})
    assert result.ip == "10.1.2.3"
    assert NetworkResult({}).ip == ""


def test_no_valid_config_names_every_file_and_no_default_is_written(tmp_path):
    (tmp_path / "10-a.conflist").write_text("{")
    (tmp_path / "20-b.conf").write_text('{"cniVersion": "1.0.0", "name": "b"}')
    ready, message = PodNetwork(str(tmp_path), ["/usr/lib/cni"], str(tmp_path / "c")).status()
    assert not ready
    assert "10-a.conflist: not JSON" in message and "20-b.conf: plugins[0] has no type" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-a.conflist", "20-b.conf"]


@pytest.mark.parametrize("document, message", [
    ('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]}',
     "name the file \\*.conflist"),
    ('{"cniVersion": "1.0.0", "name": "bad name", "type": "bridge"}', "network name"),
    ('{"cniVersion": "1.0.0", "name": "x", "type": "../../bin/sh"}', "not a plugin name"),
    ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge", "ipam": {}}', "ipam must be"),
    ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge", "capabilities": []}',
     "capabilities must be"),
])
def test_bad_single_plugin_configs(document, message):
    with pytest.raises(CNIError, match=f"x.conf: .*{message}"):
        parse_network(document.encode(), "/etc/cni/net.d/x.conf")


def test_a_single_plugin_conf_is_a_list_of_one():
    network = parse_network(b'{"cniVersion": "0.4.0", "name": "n", "type": "bridge", '
                            b'"bridge": "br0"}', "n.conf")
    assert (network.name, network.version, network.plugins) == (
        "n", "0.4.0", [{"type": "bridge", "bridge": "br0"}])


def test_kubernetes_cni_args():
    assert kubernetes_args("abc", "web", "default", "u-1") == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
    with pytest.raises(CNIError, match="K8S_POD_NAME='a;b'"):
        kubernetes_args("abc", "a;b", "default", "u")


def test_port_mappings_are_checked_and_normalised():
    assert port_mappings([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP",
                           "hostIP": ""},
                          {"hostPort": 53, "containerPort": 53, "protocol": "udp",
                           "hostIP": "127.0.0.1"}]) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]
    for bad, message in (({"hostPort": 70000, "containerPort": 80}, "hostPort 70000"),
                         ({"hostPort": 1, "containerPort": "80"}, "containerPort '80'"),
                         ({"hostPort": 1, "containerPort": 1, "protocol": "icmp"},
                          "protocol 'icmp'"),
                         ({"hostPort": 1, "containerPort": 1, "hostIP": "localhost"},
                          "hostIP 'localhost'")):
        with pytest.raises(CNIError, match=f"port mapping 0: {message}"):
            port_mappings([bad])


def test_a_0_4_0_result_is_read_into_records():
    result = NetworkResult({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/ns/net"}],
        "ips": [{"version": "6", "address": "fd00::5/64", "interface": 1},
                {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1",
                 "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.88.0.254"}],
        "dns": {"nameservers": ["10.88.0.1"], "search": ["svc.local"]},
    })
    assert result.ip == "10.88.0.5"
    assert result.additional_ips == ["fd00::5"]
    assert [(e.address, e.gateway, e.interface) for e in result.ips] == [
        ("fd00::5/64", "", "eth0"), ("10.88.0.5/16", "10.88.0.1", "eth0")]
    assert result.interfaces[1] == Interface("eth0", "02:00:00:00:00:01", "/run/ns/net")
    assert result.routes == [Route("0.0.0.0/0"), Route("10.0.0.0/8", "10.88.0.254")]
    assert (result.nameservers, result.search) == (["10.88.0.1"], ["svc.local"])


@pytest.mark.parametrize("result", [
    {"ips": [{"address": "not-an-ip"}]},
    {"ips": [{}]},
    {"routes": [{"gw": "10.0.0.1"}]},
    {"ips": "10.0.0.1"},
])
def test_a_malformed_result_is_an_error(result):
    with pytest.raises(CNIError, match="malformed CNI result"):
        NetworkResult(result)
