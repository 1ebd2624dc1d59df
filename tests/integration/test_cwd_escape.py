"""process.cwd cannot lead out of the container (the CVE-2024-21626 class).

A runtime that still holds a descriptor to a host directory when its init
changes into process.cwd lets `/proc/self/fd/N` (or `../` from it) reach the
host's filesystem.  Every fd number the init or an exec'd process could hold
is tried, through `run`, `create` + `start` and `exec`: each attempt is
either refused with an error or ends inside the container, and a file on
the host is never read.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

# Higher than any fd corral-runtime opens on its way to the container's execve (the
# init held its state directory as fd 7; a shim's helper holds more).
FD_NUMBERS = range(3, 20)
FEW_FD_NUMBERS = range(3, 12)
UP = "../" * 24  # from anywhere, far enough to reach the root of whatever tree it is in


@pytest.fixture
def host_secret():
    """A file in the host's /tmp; a container reading it has escaped."""
    name = f"corral-escape-{uuid.uuid4().hex[:12]}"
    path = f"/tmp/{name}"
    secret = uuid.uuid4().hex
    with open(path, "w") as f:
        f.write(secret)
    try:
        yield name, secret
    finally:
        os.unlink(path)


def probe(name: str) -> list[str]:
    """Show the cwd and try to read the host's file relative to it."""
    return ["sh", "-c", f"pwd; cat {UP}tmp/{name} 2>/dev/null; echo done"]


def assert_contained(result: subprocess.CompletedProcess, secret: str, where: str) -> None:
    assert secret not in result.stdout + result.stderr, f"{where}: read the host's file"
    if result.returncode == 0:
        pwd = result.stdout.splitlines()[0]
        assert pwd.startswith("/") and "unreachable" not in pwd, (where, result.stdout)
    else:
        # Refused: one clear line from the runtime, nothing of the container's program.
        assert "done" not in result.stdout, (where, result.stdout)
        assert result.stderr.strip(), where


def test_run_with_cwd_through_every_fd(runtime, bundle, host_secret):
    name, secret = host_secret
    for fd in FD_NUMBERS:
        bundle.config["process"]["cwd"] = f"/proc/self/fd/{fd}"
        bundle.write(probe(name))
        assert_contained(runtime.run_capture(bundle), secret, f"run, fd {fd}")


def test_run_with_cwd_climbing_out_of_every_fd(runtime, bundle, host_secret):
    name, secret = host_secret
    for fd in FEW_FD_NUMBERS:
        bundle.config["process"]["cwd"] = f"/proc/self/fd/{fd}/{UP}tmp"
        bundle.write(["sh", "-c", f"pwd; cat {name} 2>/dev/null; echo done"])
        assert_contained(runtime.run_capture(bundle), secret, f"run, fd {fd} and ../")


def test_create_start_with_cwd_through_every_fd(runtime, bundle, host_secret):
    """Detached: the program writes what it found into the container's own /result."""
    name, secret = host_secret
    bundle.config["root"]["readonly"] = False
    result_file = bundle.rootfs / "result"
    for fd in FEW_FD_NUMBERS:
        bundle.config["process"]["cwd"] = f"/proc/self/fd/{fd}"
        bundle.write(["sh", "-c", f"(pwd; cat {UP}tmp/{name}) > /result 2>&1"])
        result_file.unlink(missing_ok=True)
        container_id = runtime.new_id()
        created = runtime("create", "--bundle", str(bundle.path), container_id, check=False)
        if created.returncode != 0:
            assert created.stderr.strip(), f"create, fd {fd}"
            continue
        runtime("start", container_id)
        runtime.wait_stopped(container_id)
        runtime("delete", container_id)
        seen = result_file.read_text()
        assert secret not in seen, f"create/start, fd {fd}: read the host's file"
        assert seen.startswith("/") and "unreachable" not in seen.splitlines()[0], seen


def test_exec_with_cwd_through_every_fd(runtime, bundle, host_secret):
    name, secret = host_secret
    bundle.write(["sleep", "1000"])
    container_id = runtime.new_id()
    runtime("run", "--detach", "--bundle", str(bundle.path), container_id)
    try:
        for fd in FD_NUMBERS:
            for cwd in (f"/proc/self/fd/{fd}", f"/proc/self/fd/{fd}/{UP}tmp"):
                result = runtime("exec", "--cwd", cwd, container_id, *probe(name), check=False)
                assert_contained(result, secret, f"exec, cwd {cwd}")
    finally:
        runtime("delete", "--force", container_id)


def test_a_preserved_host_directory_is_no_way_out(runtime, bundle, host_secret):
    """Even an fd the caller passes on on purpose: the cwd must be reachable from the
    container's root (runc's check after chdir)."""
    name, secret = host_secret
    bundle.config["process"]["cwd"] = "/proc/self/fd/3"
    bundle.write(probe(name))
    # The shell opens the host's /tmp as fd 3 and execs the runtime with it.
    result = subprocess.run(
        ["sh", "-c", 'exec 3</tmp && exec "$@"', "sh",
         *runtime.cmd("run", "--preserve-fds", "1", "--bundle", str(bundle.path),
                      runtime.new_id())], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert secret not in result.stdout
    assert "outside of the container's root" in result.stderr


def test_exec_from_a_created_container_cannot_escape_either(runtime, bundle, host_secret):
    name, secret = host_secret
    bundle.write(["sleep", "1000"])
    container_id = runtime.new_id()
    runtime("create", "--bundle", str(bundle.path), container_id)
    try:
        for fd in FEW_FD_NUMBERS:
            result = runtime("exec", "--cwd", f"/proc/self/fd/{fd}", container_id,
                             *probe(name), check=False)
            assert_contained(result, secret, f"exec into created, fd {fd}")
    finally:
        runtime("delete", "--force", container_id)


def test_cwd_is_entered_as_root_before_the_user_change(runtime, bundle):
    """A 0700 root-owned cwd works for a non-root user, as with runc (entered first)."""
    private = bundle.rootfs / "private"
    private.mkdir(mode=0o700)
    bundle.config["process"]["cwd"] = "/private"
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    bundle.write(["sh", "-c", "pwd; id -u"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/private", "1000"]


def test_a_missing_cwd_is_made_inside_the_container(runtime, bundle):
    bundle.config["process"]["cwd"] = "/made/for/you"
    bundle.write(["pwd"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/made/for/you\n"
    assert (bundle.rootfs / "made" / "for" / "you").is_dir()


def test_a_container_without_its_own_proc_cannot_escape_either(runtime, bundle, host_secret):
    """Without a /proc mount the init keeps its state directory (it cannot reopen an
    fd through /proc), which the cwd check after chdir keeps out of reach."""
    name, secret = host_secret
    bundle.config["mounts"] = [m for m in bundle.config["mounts"] if m["destination"] != "/proc"]
    bundle.config["linux"]["maskedPaths"] = []
    bundle.config["linux"]["readonlyPaths"] = []
    for fd in FEW_FD_NUMBERS:
        bundle.config["process"]["cwd"] = f"/proc/self/fd/{fd}"
        bundle.write(probe(name))
        assert_contained(runtime.run_capture(bundle), secret, f"no /proc, fd {fd}")
    bundle.config["process"]["cwd"] = "/"
    bundle.write(["sh", "-c", "echo ran"])
    result = runtime.run_capture(bundle)
    assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
