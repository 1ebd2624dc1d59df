"""Output arrives byte for byte: `corral run`, `corral logs`, `corral exec`, CRI ExecSync and
the CRI log file, with random binary data and control characters, against a real corrald.

Each container writes `head -c N /dev/urandom` and CONTROL to a stream through `tee`, which
keeps a copy of what it produced in a host directory; what arrives is compared with that copy
by sha256 (and size, so that a failure says how far off it is).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from corral.shim.logs import MAX_LINE, output, parse_line
from tests.integration.corrald import NOTHING_LEFT, running_corrald

CORRAL = str(Path(sys.executable).parent / "corral")
# \r alone and before \n, NUL, escapes, what str.splitlines() splits on, invalid UTF-8, and no
# newline at the end (the last chunk of a stream is a partial line)
CONTROL = (b"a\rb\r\n\r\n\0\0\n\x1b[31mred\x1b[0m\t\x0b\x0c\x1c\x1d\x1e\x85\xe2\x80\xa8\n"
           b"\xff\xfe\xc3(\xed\xa0\x80 \r")
# a byte; a 16 KiB log line and one byte more (P entries); over a 64 KiB pipe buffer
SIZES = [1, MAX_LINE, MAX_LINE + 1, 100_000, 300_000]


@pytest.fixture(scope="module")
def corrald():
    with running_corrald("corraltb", "10.99.41.0/24") as daemon:
        yield daemon


@pytest.fixture
def daemon(corrald, tmp_path, monkeypatch):
    """The shared daemon, `corral` pointed at it with its own log root; nothing left after."""
    log_root = tmp_path / "pod-logs"
    log_root.mkdir()
    monkeypatch.setenv("CORRAL_SOCKET", str(corrald.socket))
    monkeypatch.setenv("CORRAL_LOG_ROOT", str(log_root))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "control").write_bytes(CONTROL)
    (tmp_path / "out").mkdir()
    yield corrald
    for pod in corrald.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
        corrald.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        corrald.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    assert corrald.leftovers() == NOTHING_LEFT


def corral(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([CORRAL, *args], capture_output=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)}: {done.returncode}\n{done.stderr[-2000:]}")
    return done


def volumes(tmp_path) -> list[str]:
    return ["-v", f"{tmp_path / 'data'}:/data:ro", "-v", f"{tmp_path / 'out'}:/out"]


def produce(name: str, stdout_size: int, stderr_size: int) -> str:
    """A shell script writing random bytes and CONTROL to each stream, a copy kept in /out."""
    return (f"{{ head -c {stdout_size} /dev/urandom; cat /data/control; }} | tee /out/{name}.out;"
            f"{{ head -c {stderr_size} /dev/urandom; cat /data/control; }} | tee /out/{name}.err"
            " >&2")


def assert_same(arrived: bytes, produced_path: Path, size: int) -> None:
    produced = produced_path.read_bytes()
    assert len(produced) == size + len(CONTROL)  # the container did write it all
    assert (len(arrived), hashlib.sha256(arrived).hexdigest()) == \
        (len(produced), hashlib.sha256(produced).hexdigest()), produced_path.name


def reassembled(log_path: str) -> dict[bytes, bytes]:
    """Each stream's bytes rebuilt from a CRI log file, as kubelet reads it."""
    data = Path(log_path).read_bytes()
    assert data.endswith(b"\n")
    streams = {b"stdout": b"", b"stderr": b""}
    for line in data.split(b"\n")[:-1]:
        _, stream, tag, content = parse_line(line)
        assert tag in (b"F", b"P") and len(content) <= MAX_LINE
        streams[stream] += output(tag, content)
    return streams


@pytest.mark.parametrize("size", SIZES)
def test_corral_run_passes_both_streams_through(daemon, tmp_path, size):
    done = corral("run", "--rm", "--name", f"run{size}", *volumes(tmp_path), "busybox", "sh",
                  "-c", produce("run", size, size // 2 + 1) + "; exit 3", check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert_same(done.stdout, tmp_path / "out" / "run.out", size)
    assert_same(done.stderr, tmp_path / "out" / "run.err", size // 2 + 1)
    assert corral("pods", "-q").stdout == b""  # --rm removed the pod
    assert os.listdir(tmp_path / "pod-logs") == []  # and its log directory


def test_corral_logs_and_the_cri_log_file_reassemble_exactly(daemon, tmp_path):
    size = 300_000
    container = corral("run", "-d", "--name", "logs", *volumes(tmp_path), "busybox", "sh", "-c",
                       produce("logs", size, MAX_LINE + 1)).stdout.decode().strip()
    status = daemon.wait_exited(container, timeout=60)
    assert status.exit_code == 0
    assert status.log_path.startswith(str(tmp_path / "pod-logs") + "/")
    logged = reassembled(status.log_path)
    assert_same(logged[b"stdout"], tmp_path / "out" / "logs.out", size)
    assert_same(logged[b"stderr"], tmp_path / "out" / "logs.err", MAX_LINE + 1)
    done = corral("logs", container[:12])
    assert_same(done.stdout, tmp_path / "out" / "logs.out", size)
    assert_same(done.stderr, tmp_path / "out" / "logs.err", MAX_LINE + 1)
    corral("rm", "logs")
    assert os.listdir(tmp_path / "pod-logs") == []


def test_corral_exec_passes_output_and_status_through(daemon, tmp_path):
    container = corral("run", "-d", "--name", "exec", *volumes(tmp_path), "busybox",
                       "sleep", "600").stdout.decode().strip()
    for size in [0, *SIZES, 5 << 20]:  # 5 MiB: over gRPC's default 4 MiB reply
        name = f"exec{size}"
        done = corral("exec", container[:12], "sh", "-c",
                      produce(name, size, size // 3) + "; exit 7", check=False)
        assert done.returncode == 7, done.stderr[-2000:]
        assert_same(done.stdout, tmp_path / "out" / f"{name}.out", size)
        assert_same(done.stderr, tmp_path / "out" / f"{name}.err", size // 3)
    corral("rm", "-f", "exec")


def test_cri_exec_sync_returns_the_bytes(daemon, tmp_path):
    pod_id, pod_config = daemon.run_pod("execsync")
    mounts = [api_pb2.Mount(host_path=str(tmp_path / "data"), container_path="/data",
                            readonly=True),
              api_pb2.Mount(host_path=str(tmp_path / "out"), container_path="/out")]
    container = daemon.create_container(pod_id, pod_config, "sleeper", ["sleep", "600"],
                                        mounts=mounts)
    daemon.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container))
    for size in [0, *SIZES, 2 << 20]:  # 3 MiB in all: under the test client's 4 MiB limit
        name = f"sync{size}"
        reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
            container_id=container, cmd=["sh", "-c", produce(name, size, size // 2) + "; exit 9"],
            timeout=60))
        assert reply.exit_code == 9
        assert_same(reply.stdout, tmp_path / "out" / f"{name}.out", size)
        assert_same(reply.stderr, tmp_path / "out" / f"{name}.err", size // 2)
    reply = daemon.runtime.ExecSync(api_pb2.ExecSyncRequest(
        container_id=container, cmd=["cat", "/data/control"]))
    assert (reply.exit_code, reply.stdout, reply.stderr) == (0, CONTROL, b"")
