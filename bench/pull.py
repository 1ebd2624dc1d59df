"""Pull + unpack of one multi-layer image from a local registry: corral, skopeo, containerd.

The image: LAYERS layers of LAYER_MB MiB each of seeded pseudo-random bytes
(gzip cannot shrink them), pushed once to Debian's docker-registry on
127.0.0.1.  Each iteration is a cold pull for every tool, tools taking turns:

    corral      `corral --root FRESH pull -q REF`: fetch, verify, unpack into overlay snapshots
    skopeo      `skopeo copy docker://REF containers-storage:[overlay@FRESH]`: the same, into
                containers/storage (podman's) overlay layers
    containerd  `ctr image pull --plain-http REF` against a containerd with a FRESH root
                (started outside the timing): fetch and unpack into its overlayfs snapshotter

Every timing is a whole process, interpreter start included.  Medians over
the iterations, and ratios against containerd.

    .venv/bin/python bench/pull.py [-n 5] [--layers 5] [--layer-mb 40]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRAL = os.path.join(REPO, ".venv", "bin", "corral")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.05)


def build_layout(dest: str, layers: int, layer_mb: int) -> int:
    """An OCI layout of `layers` gzip layers; the total compressed size."""
    import io
    import tarfile

    rng = random.Random(1234)
    blobs, descriptors, diff_ids, total = {}, [], [], 0
    for i in range(layers):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for j in range(4):
                data = rng.randbytes(layer_mb * 2**20 // 4)
                info = tarfile.TarInfo(f"layer{i}/file{j}.bin")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
                tar.addfile(info, io.BytesIO(data))
        raw = buffer.getvalue()
        blob = gzip.compress(raw, compresslevel=1, mtime=0)
        digest = hashlib.sha256(blob).hexdigest()
        blobs[digest] = blob
        total += len(blob)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": f"sha256:{digest}", "size": len(blob)})
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                                      "size": len(config)},
                           "layers": descriptors}).encode()
    for blob in (config, manifest):
        blobs[hashlib.sha256(blob).hexdigest()] = blob
    os.makedirs(os.path.join(dest, "blobs", "sha256"))
    for digest, blob in blobs.items():
        with open(os.path.join(dest, "blobs", "sha256", digest), "wb") as f:
            f.write(blob)
    with open(os.path.join(dest, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(dest, "index.json"), "w") as f:
        json.dump(index, f)
    return total


def timed(command: list[str]) -> float:
    """Wall seconds of one process, start to exit."""
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {done.stderr.decode()[-500:]}")
    return elapsed


def unmount_under(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in reversed(points):
        if point == path or point.startswith(path + "/"):
            subprocess.run(["umount", "-l", point], check=False)


class Containerd:
    def __init__(self, base: str):
        self.base = base
        self.socket = os.path.join(base, "containerd.sock")
        with open(os.path.join(base, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                    f'[grpc]\n  address = "{self.socket}"\n'
                    '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
        self.log = open(os.path.join(base, "containerd.log"), "w")
        self.process = subprocess.Popen(["containerd", "--config",
                                         os.path.join(base, "config.toml")],
                                        stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("containerd did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()
        unmount_under(self.base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=5)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=40)
    opts = parser.parse_args(argv)
    for tool in ("docker-registry", "skopeo", "containerd", "ctr"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/setup installs it)")

    work = tempfile.mkdtemp(prefix="corral-pull-bench-", dir="/var/tmp")
    registry = None
    results: dict[str, list[float]] = {"corral": [], "skopeo": [], "containerd": []}
    try:
        size = build_layout(os.path.join(work, "layout"), opts.layers, opts.layer_mb)
        port = free_port()
        with open(os.path.join(work, "registry.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {work}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
        registry = subprocess.Popen(["docker-registry", "serve", f"{work}/registry.yml"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, registry, "docker-registry")
        ref = f"127.0.0.1:{port}/bench/image:latest"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{work}/layout:latest", f"docker://{ref}"], check=True)
        print(f"image: {opts.layers} layers, {size / 2**20:.0f} MiB compressed; "
              f"{opts.iterations} cold pulls each", file=sys.stderr)

        tools = list(results)
        for i in range(opts.iterations):
            for tool in tools[i % 3:] + tools[:i % 3]:
                scratch = os.path.join(work, f"{tool}-{i}")
                os.makedirs(scratch)
                if tool == "corral":
                    results[tool].append(timed([CORRAL, "--root", scratch, "pull", "-q", ref]))
                elif tool == "skopeo":
                    store = f"[overlay@{scratch}/root+{scratch}/run]"
                    results[tool].append(timed(
                        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                         f"containers-storage:{store}bench/image:latest"]))
                else:
                    daemon = Containerd(scratch)
                    try:
                        results[tool].append(timed(
                            ["ctr", "-a", daemon.socket, "-n", "bench", "images", "pull",
                             "--plain-http", ref]))
                    finally:
                        daemon.stop()
                unmount_under(scratch)
                shutil.rmtree(scratch, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if registry is not None:
            registry.kill()
            registry.wait()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(results["containerd"])
    print(f"{'tool':<12}{'median s':>10}{'min':>8}{'max':>8}{'MiB/s':>8}{'vs ctr':>8}")
    for tool, times in results.items():
        median = statistics.median(times)
        print(f"{tool:<12}{median:>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
              f"{size / 2**20 / median:>8.0f}{median / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
