"""CNI network configs: which one is used, what is wrong with a bad one, the default."""

import json

import pytest

from corral.network.cni import CNIError, load_network, parse_network
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
