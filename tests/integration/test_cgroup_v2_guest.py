"""corral's cgroup tests on a pure cgroup v2 host: a QEMU guest booted once for this module.

This machine mounts cgroups hybrid, so here the v2 manager, the eBPF device
filter and the v2 stats would only ever meet an empty cgroup2 mount.  The
guest (guest.py: Debian's kernel with cgroup_no_v1=all, TCG, the host's root
shared read-only under a tmpfs overlay) runs the tests below with this
checkout's .venv; they take their v2 paths there.  A missing QEMU or kernel
fails loudly: scripts/setup installs both.
"""

from __future__ import annotations

import re

import pytest

from .conftest import REPO
from .guest import run_in_guest

pytestmark = pytest.mark.root

# Chosen for what they cover on v2 and for time: TCG runs them ~5x slower than here.
GUEST_TESTS = [
    "tests/integration/test_cgroup_v2.py",  # v2 only: files, eBPF filter, stats, paths
    "tests/integration/test_cgroup_stats.py",
    "tests/integration/test_cgroups.py::test_cgroups_path_resolution",
    "tests/integration/test_cgroups.py::test_v2_create_join_freeze_destroy",
    "tests/integration/test_cgroups.py::test_open_manager_on_a_pure_v2_hierarchy",
    "tests/integration/test_cgroups.py::test_v2_refuses_what_the_hierarchy_lacks",
    "tests/integration/test_cgroups.py::test_v2_device_filter",
    "tests/integration/test_manage.py::test_pause_freezes_and_resume_thaws",
    "tests/integration/test_manage.py::test_a_paused_container_can_be_force_deleted",
    "tests/integration/test_manage.py::test_update_changes_the_live_cgroup",
    "tests/integration/test_events.py",
    "tests/integration/test_inside.py::test_pids_limit_stops_a_fork_bomb",
    "tests/integration/test_inside.py::test_device_cgroup_denies_what_is_not_allowed",
    "tests/integration/test_inside.py::test_cgroup_and_time_namespaces",
    "tests/integration/test_container_config.py::"
    "test_cgroup_namespace_shows_the_containers_own_limits",
    "tests/integration/test_exec.py::test_exec_joins_the_pid_namespace_cgroup_and_the_rest",
    "tests/integration/test_lifecycle.py::test_create_start_kill_delete",
    # corrald: a pod under a CRI cgroup parent (the container in a cgroup namespace),
    # stats read from the cgroup, an update that ends in an OOM kill.
    "tests/integration/test_cri.py::test_pod_sysctls_and_cgroup_parent",
    "tests/integration/test_cri.py::test_container_stats",
    "tests/integration/test_cri.py::test_oom_killed_reason_and_update_resources",
]
GUEST_TIMEOUT = 600  # seconds; the run takes ~2 min here


@pytest.fixture(scope="module")
def guest_run():
    return run_in_guest([str(REPO / ".venv/bin/python"), "-m", "pytest", "-q", "-rfEs",
                         "-p", "no:cacheprovider", "--color=no", *GUEST_TESTS],
                        cwd=str(REPO), timeout=GUEST_TIMEOUT)


def test_cgroup_tests_pass_on_a_pure_cgroup_v2_guest(guest_run):
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*) in [\d.]+s", guest_run.output,
                         re.M)
    assert guest_run.returncode == 0 and summary, (
        f"pytest in the cgroup v2 guest exited {guest_run.returncode}:\n{guest_run.output}")
    # Every selected test ran there: none skipped or deselected by a wrong host check.
    assert re.fullmatch(r"\d+ passed", summary[-1].strip(" =")), summary[-1]
    assert int(summary[-1].split()[0]) >= len(GUEST_TESTS)
