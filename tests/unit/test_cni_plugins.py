"""How corral.network.cni talks to a plugin (the CNI protocol as libcni speaks it), checked
with small shell-script plugins that record what they were given: no root, no netns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from corral.network import cni
from corral.network.cni import CNIError, Invocation, Network

RECORDER = """#!/bin/sh
# Records its stdin and CNI_* environment, in call order; prints a result naming itself.
log={log}
n=$(ls "$log" | wc -l)
n=$(printf %03d $((n / 2)))
cat > "$log/$n-$CNI_COMMAND-{name}.json"
env | grep '^CNI_' | sort > "$log/$n-$CNI_COMMAND-{name}.env"
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion": "1.0.0", "interfaces": [{{"name": "{name}"}}],
         "ips": [{{"address": "10.1.0.{number}/24", "interface": 0}}]}}'
fi
"""


@pytest.fixture
def plugins(tmp_path) -> Path:
    """A bin dir of plugins: rec1, rec2 (recorders), fail7 (an error object), slow, garbage."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    scripts = {
        "rec1": RECORDER.format(log=log, name="rec1", number=1),
        "rec2": RECORDER.format(log=log, name="rec2", number=2),
        "fail7": RECORDER.format(log=log, name="fail7", number=7).replace(
            'if [ "$CNI_COMMAND" = ADD ]; then',
            'if [ "$CNI_COMMAND" = ADD ]; then\n  echo \'{"cniVersion": "1.0.0", "code": 7, '
            '"msg": "invalid network config", "details": "no bridge"}\'; exit 1\nfi\n'
            'if false; then'),
        "delfail": RECORDER.format(log=log, name="delfail", number=9).replace(
            "fi\n", 'fi\n[ "$CNI_COMMAND" = DEL ] && { echo "cannot delete" >&2; exit 2; }\n'),
        "slow": f"#!/bin/sh\necho $$ > {log}/slow.pid\nexec sleep 30\n",
        "garbage": "#!/bin/sh\necho 'this is not json'\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


def calls(bin_dir: Path) -> list[tuple[str, dict, dict]]:
    """(command-plugin, stdin config, CNI env) of every call, in order."""
    log = bin_dir.parent / "log"
    out = []
    for config in sorted(log.glob("*.json")):
        env = dict(line.split("=", 1) for line in
                   config.with_suffix(".env").read_text().splitlines())
        out.append((config.stem.split("-", 1)[1], json.loads(config.read_text()), env))
    return out


def network(*types: str, version: str = "1.0.0") -> Network:
    plugins = [{"type": t, **({"capabilities": {"portMappings": True}} if t == "rec1" else {})}
               for t in types]
    return cni.parse_network(json.dumps({"cniVersion": version, "name": "testnet",
                                         "plugins": plugins}).encode(), "test.conflist")


INVOCATION = Invocation("c0ffee", "/run/netns/x", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p",
                        {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                           "protocol": "tcp"}], "bandwidth": {}})


def test_add_chains_results_and_passes_only_declared_capabilities(plugins):
    result = network("rec1", "rec2").add([str(plugins)], INVOCATION)
    assert result["ips"] == [{"address": "10.1.0.2/24", "interface": 0}]
    (first, config1, env1), (second, config2, env2) = calls(plugins)
    assert (first, second) == ("ADD-rec1", "ADD-rec2")
    assert env1 == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee",
                    "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
                    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p", "CNI_PATH": str(plugins)}
    assert (config1["name"], config1["cniVersion"]) == ("testnet", "1.0.0")
    assert "prevResult" not in config1
    assert config1["runtimeConfig"] == {"portMappings": INVOCATION.capabilities["portMappings"]}
    assert config2["prevResult"]["ips"][0]["address"] == "10.1.0.1/24"
    assert "runtimeConfig" not in config2


def test_del_runs_in_reverse_and_past_a_failing_plugin(plugins):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}
    with pytest.raises(CNIError, match=r"CNI plugin delfail DEL \(network testnet\): "
                                       "cannot delete"):
        network("rec1", "delfail", "rec2").delete([str(plugins)], INVOCATION, prev)
    assert [(c, config.get("prevResult")) for c, config, _ in calls(plugins)] == [
        ("DEL-rec2", prev), ("DEL-delfail", prev), ("DEL-rec1", prev)]


def test_a_plugin_error_object_is_reported_and_what_began_is_deleted(plugins):
    with pytest.raises(CNIError) as error:
        network("rec1", "fail7", "rec2").add([str(plugins)], INVOCATION)
    assert str(error.value) == ("CNI plugin fail7 ADD (network testnet): error 7: "
                                "invalid network config (no bridge)")
    # the failing plugin is DEL'd too (it may have done half its work), then rec1; rec2
    # never ran
    assert [c for c, _, _ in calls(plugins)] == ["ADD-rec1", "ADD-fail7", "DEL-fail7",
                                                  "DEL-rec1"]


def test_check_is_given_the_cached_result_and_skipped_before_0_4_0(plugins):
    prev = {"cniVersion": "1.0.0", "ips": []}
    network("rec1", "rec2").check([str(plugins)], INVOCATION, prev)
    assert [(c, config["prevResult"]) for c, config, _ in calls(plugins)] == [
        ("CHECK-rec1", prev), ("CHECK-rec2", prev)]
    network("rec1", version="0.3.1").check([str(plugins)], INVOCATION, prev)
    assert len(calls(plugins)) == 2


def test_a_hanging_plugin_times_out_and_is_killed(plugins, monkeypatch):
    monkeypatch.setattr(cni, "PLUGIN_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(CNIError, match=r"CNI plugin slow ADD \(network testnet\): timed out"):
        network("slow").add([str(plugins)], INVOCATION)
    assert time.monotonic() - started < 10
    pid = int((plugins.parent / "log" / "slow.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_result_that_is_not_json_is_an_error(plugins):
    with pytest.raises(CNIError, match="CNI plugin garbage ADD .*result is not JSON"):
        network("garbage").add([str(plugins)], INVOCATION)


def test_a_missing_plugin_names_the_dirs_searched(plugins):
    with pytest.raises(CNIError, match=f"CNI plugin 'nope' not found in {plugins}:/nonexistent"):
        network("nope").add([str(plugins), "/nonexistent"], INVOCATION)
