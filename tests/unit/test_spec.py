"""config.json parsing: valid configs load, every malformed field is named in the error."""

from __future__ import annotations

import json

import pytest

from corral.spec.defaults import default_config
from corral.spec.runtime import Spec, SpecError, load_config


def parse(edit) -> Spec:
    config = default_config(terminal=False)
    edit(config)
    return Spec.parse(config)


def test_the_default_config_parses_with_runc_defaults():
    spec = Spec.parse(default_config())
    assert spec.process.args == ["sh"] and spec.process.terminal
    assert spec.root.path == "rootfs" and spec.root.readonly
    assert [ns.type for ns in spec.linux.namespaces] == ["pid", "network", "ipc", "uts", "mount"]
    assert spec.linux.resources == {"devices": [{"allow": False, "access": "rwm"}]}
    assert spec.process.rlimits[0].type == "RLIMIT_NOFILE"
    assert spec.process.capabilities.bounding == [
        "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def test_rootless_default_maps_the_caller_and_drops_cgroups():
    spec = Spec.parse(default_config(rootless=True))
    assert spec.has_new_namespace("user") and not spec.linux.namespace("network")
    assert spec.linux.uid_mappings[0].size == 1
    assert all(m.type != "cgroup" for m in spec.mounts)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["process"].update(args=[]), "process.args"),
    (lambda c: c["process"].update(args="sh"), "process.args"),
    (lambda c: c["process"].update(cwd="relative"), "process.cwd"),
    (lambda c: c["process"].update(env=["NOEQUALS"]), "process.env[0]"),
    (lambda c: c["process"]["user"].update(uid=-1), "process.user.uid"),
    (lambda c: c["process"]["user"].update(gid=True), "process.user.gid"),
    (lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 1}]),
     "process.rlimits[0]"),
    (lambda c: c["process"].update(oomScoreAdj=5000), "process.oomScoreAdj"),
    (lambda c: c["root"].pop("path"), "root.path"),
    (lambda c: c["mounts"].append({"destination": "rel"}), "config.mounts[7].destination"),
    (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "linux.namespaces[5].type"),
    (lambda c: c["linux"]["namespaces"].append({"type": "pid"}), "'pid' listed twice"),
    (lambda c: c["linux"].update(rootfsPropagation="weird"), "linux.rootfsPropagation"),
    (lambda c: c["linux"]["resources"].update(memory={"limit": "1G"}),
     "linux.resources.memory.limit"),
    (lambda c: c["linux"]["resources"].update(bogus={}), "linux.resources.bogus"),
    (lambda c: c["linux"]["resources"].update(unified={"../x": "1"}), "linux.resources.unified"),
    (lambda c: c["linux"].update(devices=[{"path": "/dev/x", "type": "q"}]),
     "linux.devices[0].type"),
    (lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 1}]),
     "linux.uidMappings"),
    (lambda c: c["linux"]["namespaces"].remove({"type": "uts"}), "hostname"),
    (lambda c: c.update(ociVersion="2.0.0"), "ociVersion"),
    (lambda c: c.update(hooks={"prestart": [{"path": "relative"}]}), "hooks.prestart[0].path"),
    (lambda c: c.update(hooks={"later": []}), "hooks.later"),
])
def test_malformed_fields_are_named(edit, field):
    with pytest.raises(SpecError) as error:
        parse(edit)
    assert field in str(error.value)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(SpecError, match="invalid JSON"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(default_config()))
    assert load_config(str(tmp_path)).hostname == "corral"
