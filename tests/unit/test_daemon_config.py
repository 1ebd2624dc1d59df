"""corrald's TOML config: every key has a default; bad values are clear errors."""

import pytest

from corral.daemon.config import ConfigError, load
from corral.shim.handlers import UnknownHandler


def test_defaults_without_a_file():
    config = load()
    assert (config.root, config.state) == ("/var/lib/corral", "/run/corral")
    assert config.socket_path == "/run/corral/corral.sock"
    assert config.handler("").type == "native"
    assert config.handler("runc").path == "/usr/sbin/runc"
    assert config.cni.conf_dir == "/etc/cni/net.d"


def test_file_and_flags(tmp_path):
    path = tmp_path / "corrald.toml"
    path.write_text('state = "/run/x"\nlog_level = "debug"\n[cni]\nbin_dirs = ["/opt/cni"]\n'
                    '[runtimes.kata]\ntype = "oci"\npath = "/usr/bin/kata-runtime"\n')
    config = load(str(path), root="/srv/corral")
    assert (config.root, config.state, config.log_level) == ("/srv/corral", "/run/x", "debug")
    assert config.socket_path == "/run/x/corral.sock"
    assert config.cni.bin_dirs == ["/opt/cni"]
    # the CNI cache outlives a reboot, under the root; the old default is still looked at
    assert (config.cni.cache_dir, config.cni.legacy_cache_dir) == ("/srv/corral/cni",
                                                                   "/run/x/cni")
    assert config.handler("kata").path == "/usr/bin/kata-runtime"


def test_explicit_cni_cache_dir(tmp_path):
    path = tmp_path / "corrald.toml"
    path.write_text('[cni]\ncache_dir = "/var/cache/cni"\n')
    config = load(str(path))
    assert (config.cni.cache_dir, config.cni.legacy_cache_dir) == ("/var/cache/cni", "")


@pytest.mark.parametrize("text, message", [
    ("root = ", "not valid TOML"),
    ("rooot = '/x'", "unknown key"),
    ("root = 'relative'", "absolute"),
    ("log_level = 'loud'", "log_level"),
    ("listen = 'tcp://0.0.0.0:1'", "unix:///"),
    ("[runtimes.x]\ntype = 'kvm'", "one of native, oci, runsc, vm"),
    ("[runtimes.x]\ntype = 'runsc'", "absolute path"),
    ("[runtimes.vm]\nmemory = 'lots'", "size such as"),
    ("[runtimes.vm]\noverhead = { disk = 1 }", "table of memory and cpu"),
    ("[runtimes.runc]\nruntime_flags = '--debug'", "list of strings"),
    ("[runtimes.x]\ntype = 'oci'", "absolute path"),
    ("default_runtime = 'nope'", "default_runtime"),
    ("[cni]\nbin_dirs = '/usr/lib/cni'", "list of strings"),
    ("[runtimes.vm]\npool = -1", "pool must be a number of VMs"),
    ("[runtimes.vm]\npool = true", "pool must be a number of VMs"),
    ("[runtimes.vm]\npool = '3'", "pool must be a number of VMs"),
    ("[runtimes.runc]\npool = 2", "vm handlers only"),
])
def test_bad_config(tmp_path, text, message):
    path = tmp_path / "corrald.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(str(path))


def test_unknown_handler():
    with pytest.raises(UnknownHandler, match="no runtime handler 'gvisor'"):
        load().handler("gvisor")


def test_handlers_by_type_with_their_overhead(tmp_path):
    path = tmp_path / "corrald.toml"
    path.write_text("[runtimes.vm]\nmemory = '256MiB'\noverhead = { memory = '300Mi', cpu = 0.5 }\n"
                    "[runtimes.sandboxed]\ntype = 'runsc'\npath = '/opt/runsc'\n"
                    "platform = 'kvm'\n")
    config = load(str(path))
    vm = config.handler("vm")
    assert (vm.type, vm.options["memory"], vm.overhead) == ("vm", 256 << 20,
                                                            {"memory": 300 << 20, "cpu": 0.5})
    sandboxed = config.handler("sandboxed")
    assert (sandboxed.type, sandboxed.options) == ("runsc", {"platform": "kvm"})
    assert not sandboxed.features.host_namespaces and config.handler("").features.tty
    assert sandboxed.unavailable() == "/opt/runsc is not installed"
    assert "sandboxed" not in [h.name for h in config.offered()]
    assert config.handler("runsc").options["platform"] == "ptrace"  # out of the box


def test_a_vm_pool_size(tmp_path):
    path = tmp_path / "corrald.toml"
    path.write_text("[runtimes.vm]\npool = 3\n")
    assert load(str(path)).runtimes["vm"].options["pool"] == 3
