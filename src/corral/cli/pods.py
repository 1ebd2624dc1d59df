"""`corral run | ps | pods | logs | stop | rm | info`: pods and containers, through corrald's CRI.

These commands speak CRI to corrald on its socket (`--socket`, default
/run/corral/corral.sock), like crictl does, never to corral's internals:
what they show is what kubelet would see.

    corral run [--name N] [--rm] [-d] [-e K=V]... [-v HOST:CTR[:ro]]... [-p HOST:CTR[/udp]]...
               IMAGE [COMMAND [ARG...]]
    corral ps [-a] [-q]        containers (running; -a all)
    corral pods [-q]           pod sandboxes
    corral logs [-f] CONTAINER
    corral exec [-t SECONDS] CONTAINER COMMAND...
    corral stop [-t SECONDS] CONTAINER|POD...
    corral rm [-f] CONTAINER|POD...
    corral info

Output passes through byte for byte: `run` and `logs` reassemble the CRI log
(F entries get their newline back, P entries none), `exec` writes ExecSync's
bytes.  `corral run` keeps pod logs under $CORRAL_LOG_ROOT (default
/var/log/corral/pods), in kubelet's <namespace>_<name>_<uid> layout.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time

DEFAULT_SOCKET = "/run/corral/corral.sock"
LOG_ROOT = "/var/log/corral/pods"
MAX_REPLY = 64 << 20  # above corrald's send limit: ExecSync output can be tens of MiB


class CliError(Exception):
    pass


class Cri:
    """A CRI client on corrald's socket; errors become one-line CliErrors."""

    def __init__(self, socket_path: str):
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        if not os.path.exists(socket_path):
            raise CliError(f"corrald is not running (no socket at {socket_path}); start it with "
                           "`corrald` or give --socket")
        self.pb = api_pb2
        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket_path}", options=[
            ("grpc.max_receive_message_length", MAX_REPLY)])
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def call(self, stub_method, request, timeout: float | None = 300):
        try:
            return stub_method(request, timeout=timeout)
        except self.grpc.RpcError as e:
            raise CliError(f"{e.code().name.lower()}: {e.details()}") from None

    def close(self) -> None:
        self.channel.close()


def add_commands(subparsers) -> None:
    run = subparsers.add_parser("run", help="run a container in a new pod")
    run.add_argument("--name", help="pod and container name (default: random)")
    run.add_argument("--rm", action="store_true", help="remove the pod when the container exits")
    run.add_argument("-d", "--detach", action="store_true", help="print the container ID, exit")
    run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]")
    run.add_argument("-p", "--publish", action="append", default=[],
                     metavar="HOSTPORT:CTRPORT[/udp]")
    run.add_argument("--runtime", default="", help="runtime handler (RuntimeClass)")
    run.add_argument("image")
    run.add_argument("command", nargs="...")
    run.set_defaults(func=cmd_run)

    ps = subparsers.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("-q", "--quiet", action="store_true")
    ps.set_defaults(func=cmd_ps)

    pods = subparsers.add_parser("pods", help="list pod sandboxes")
    pods.add_argument("-q", "--quiet", action="store_true")
    pods.set_defaults(func=cmd_pods)

    logs = subparsers.add_parser("logs", help="a container's output")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("container")
    logs.set_defaults(func=cmd_logs)

    exec_ = subparsers.add_parser("exec", help="run a command in a running container")
    exec_.add_argument("-t", "--timeout", type=int, default=0, help="seconds (0: no limit)")
    exec_.add_argument("container")
    exec_.add_argument("command", nargs="...")
    exec_.set_defaults(func=cmd_exec)

    stop = subparsers.add_parser("stop", help="stop containers or pods")
    stop.add_argument("-t", "--timeout", type=int, default=10)
    stop.add_argument("ids", nargs="+", metavar="ID")
    stop.set_defaults(func=cmd_stop)

    rm = subparsers.add_parser("rm", help="remove containers or pods")
    rm.add_argument("-f", "--force", action="store_true", help="stop them first")
    rm.add_argument("ids", nargs="+", metavar="ID")
    rm.set_defaults(func=cmd_rm)

    info = subparsers.add_parser("info", help="corrald's version and status")
    info.set_defaults(func=cmd_info)


def _cri(opts) -> Cri:
    return Cri(getattr(opts, "socket", None) or os.environ.get("CORRAL_SOCKET") or
               DEFAULT_SOCKET)


# --- run ---------------------------------------------------------------------------------------
def cmd_run(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    name = opts.name or f"corral-{secrets.token_hex(4)}"
    if not cri.call(cri.images.ImageStatus, pb.ImageStatusRequest(
            image=pb.ImageSpec(image=opts.image))).HasField("image"):
        print(f"pulling {opts.image} ...", file=sys.stderr)
        cri.call(cri.images.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image=opts.image)))
    uid = secrets.token_hex(16)
    log_dir = os.path.join(_log_root(), f"default_{name}_{uid}")  # kubelet's layout
    pod_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name, log_directory=log_dir, port_mappings=_ports(pb, opts.publish))
    pod_config.linux.security_context.namespace_options.pid = pb.CONTAINER
    pod_id = cri.call(cri.runtime.RunPodSandbox, pb.RunPodSandboxRequest(
        config=pod_config, runtime_handler=opts.runtime)).pod_sandbox_id
    try:
        container_config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=opts.image),
            command=opts.command[:1], args=opts.command[1:], log_path=f"{name}.log",
            envs=[_env(pb, e) for e in opts.env], mounts=[_mount(pb, v) for v in opts.volume])
        container_id = cri.call(cri.runtime.CreateContainer, pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config,
            sandbox_config=pod_config)).container_id
        cri.call(cri.runtime.StartContainer, pb.StartContainerRequest(container_id=container_id))
    except BaseException:
        _remove_pod(cri, pod_id)
        raise
    if opts.detach:
        print(container_id)
        return 0
    try:
        code = _follow(cri, container_id, os.path.join(log_dir, f"{name}.log"))
    except KeyboardInterrupt:
        cri.call(cri.runtime.StopContainer, pb.StopContainerRequest(container_id=container_id,
                                                                     timeout=10))
        code = 130
    if opts.rm:
        _remove_pod(cri, pod_id)
    return code


def _remove_pod(cri: Cri, pod_id: str) -> None:
    """Stop and remove a pod, and the log directory `corral run` made for it."""
    pb = cri.pb
    meta = cri.call(cri.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(
        pod_sandbox_id=pod_id)).status.metadata
    cri.call(cri.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.call(cri.runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    shutil.rmtree(os.path.join(_log_root(), f"{meta.namespace}_{meta.name}_{meta.uid}"),
                  ignore_errors=True)


def _log_root() -> str:
    return os.environ.get("CORRAL_LOG_ROOT") or LOG_ROOT


def _ports(pb, specs: list[str]) -> list:
    mappings = []
    for spec in specs:
        ports, _, protocol = spec.partition("/")
        host, sep, container = ports.rpartition(":")
        if not sep or not host.isdigit() or not container.isdigit():
            raise CliError(f"-p {spec}: expected HOSTPORT:CONTAINERPORT[/tcp|udp]")
        mappings.append(pb.PortMapping(
            host_port=int(host), container_port=int(container),
            protocol={"": pb.TCP, "tcp": pb.TCP, "udp": pb.UDP, "sctp": pb.SCTP}[protocol]))
    return mappings


def _env(pb, spec: str):
    key, sep, value = spec.partition("=")
    if not key or not sep:
        raise CliError(f"-e {spec}: expected KEY=VALUE")
    return pb.KeyValue(key=key, value=value)


def _mount(pb, spec: str):
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not os.path.isabs(parts[0]) or not os.path.isabs(parts[1]) \
            or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise CliError(f"-v {spec}: expected /HOST/PATH:/CONTAINER/PATH[:ro]")
    return pb.Mount(host_path=parts[0], container_path=parts[1],
                    readonly=len(parts) == 3 and parts[2] == "ro")


def _follow(cri: Cri, container_id: str, log_path: str) -> int:
    """Print the container's log as it grows until it exits; its exit code."""
    pb = cri.pb
    offset = 0
    while True:
        status = cri.call(cri.runtime.ContainerStatus,
                          pb.ContainerStatusRequest(container_id=container_id)).status
        offset = _print_log(log_path, offset)
        if status.state == pb.CONTAINER_EXITED:
            _print_log(log_path, offset)
            return status.exit_code
        time.sleep(0.05)


def _print_log(path: str, offset: int) -> int:
    from corral.shim.logs import output, parse_line

    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1  # a last line still being written is read next time
    # Entries end at b"\n" only: their content may hold \r and any other byte.
    for line in data[:end].split(b"\n")[:-1]:
        try:
            _, stream, tag, content = parse_line(line)
        except ValueError:
            continue
        out = sys.stderr if stream == b"stderr" else sys.stdout
        out.buffer.write(output(tag, content))
        out.flush()
    return offset + end


# --- ps, pods, logs ----------------------------------------------------------------------------
def _ago(ns: int) -> str:
    seconds = max(0, time.time() - ns / 1e9)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now" if seconds < 2 else f"{int(seconds)} seconds ago"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def cmd_ps(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    containers = cri.call(cri.runtime.ListContainers, pb.ListContainersRequest()).containers
    if not opts.all:
        containers = [c for c in containers if c.state == pb.CONTAINER_RUNNING]
    if opts.quiet:
        for c in containers:
            print(c.id[:12])
        return 0
    states = {pb.CONTAINER_CREATED: "created", pb.CONTAINER_RUNNING: "running",
              pb.CONTAINER_EXITED: "exited", pb.CONTAINER_UNKNOWN: "unknown"}
    rows = []
    for c in containers:
        state = states[c.state]
        if c.state == pb.CONTAINER_EXITED:
            status = cri.call(cri.runtime.ContainerStatus,
                              pb.ContainerStatusRequest(container_id=c.id)).status
            state = f"exited ({status.exit_code})"
        rows.append([c.id[:12], c.image.image, _ago(c.created_at), state, c.metadata.name,
                     c.pod_sandbox_id[:12]])
    _table(["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "POD"], rows)
    return 0


def cmd_pods(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    pods = cri.call(cri.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
    if opts.quiet:
        for p in pods:
            print(p.id[:12])
        return 0
    rows = []
    for p in pods:
        status = cri.call(cri.runtime.PodSandboxStatus,
                          pb.PodSandboxStatusRequest(pod_sandbox_id=p.id)).status
        rows.append([p.id[:12], p.metadata.name, p.metadata.namespace,
                     "ready" if p.state == pb.SANDBOX_READY else "notready",
                     status.network.ip or "host", _ago(p.created_at), p.runtime_handler])
    _table(["POD", "NAME", "NAMESPACE", "STATE", "IP", "CREATED", "RUNTIME"], rows)
    return 0


def cmd_logs(opts) -> int:
    cri = _cri(opts)
    status = cri.call(cri.runtime.ContainerStatus,
                      cri.pb.ContainerStatusRequest(container_id=opts.container)).status
    if not status.log_path:
        raise CliError(f"container {opts.container} has no log (its pod has no log directory)")
    if opts.follow:
        _follow(cri, status.id, status.log_path)
    else:
        _print_log(status.log_path, 0)
    return 0


def cmd_exec(opts) -> int:
    """ExecSync: the command's output and exit status pass through (no stdin, no tty)."""
    if not opts.command:
        raise CliError("exec: give a command to run")
    cri = _cri(opts)
    kind, full = _resolve(cri, opts.container)
    if kind != "container":
        raise CliError(f"{opts.container!r} is a pod; exec needs a container")
    reply = cri.call(cri.runtime.ExecSync, cri.pb.ExecSyncRequest(
        container_id=full, cmd=opts.command, timeout=opts.timeout), timeout=None)
    sys.stdout.buffer.write(reply.stdout)
    sys.stderr.buffer.write(reply.stderr)
    return reply.exit_code


# --- stop, rm, info ----------------------------------------------------------------------------
def _resolve(cri: Cri, ident: str) -> tuple[str, str]:
    """("container" | "pod", full ID) for an ID or prefix or name."""
    pb = cri.pb
    containers = cri.call(cri.runtime.ListContainers, pb.ListContainersRequest()).containers
    pods = cri.call(cri.runtime.ListPodSandbox, pb.ListPodSandboxRequest()).items
    found = [("container", c.id) for c in containers
             if c.id.startswith(ident) or c.metadata.name == ident]
    found += [("pod", p.id) for p in pods if p.id.startswith(ident) or p.metadata.name == ident]
    if not found:
        raise CliError(f"no container or pod {ident!r}")
    pods_found = [f for f in found if f[0] == "pod"]
    if len(found) > 1 and len(pods_found) == 1 and all(
            f[0] == "pod" or _pod_of(containers, f[1]) == pods_found[0][1] for f in found):
        return pods_found[0]  # `corral run --name x` made a pod and a container named x
    if len(found) > 1:
        raise CliError(f"{ident!r} is ambiguous: {', '.join(i[:12] for _, i in found)}")
    return found[0]


def _pod_of(containers, container_id: str) -> str:
    return next((c.pod_sandbox_id for c in containers if c.id == container_id), "")


def cmd_stop(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    for ident in opts.ids:
        kind, full = _resolve(cri, ident)
        if kind == "pod":
            cri.call(cri.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=full))
        else:
            cri.call(cri.runtime.StopContainer, pb.StopContainerRequest(
                container_id=full, timeout=opts.timeout))
        print(full[:12])
    return 0


def cmd_rm(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    for ident in opts.ids:
        kind, full = _resolve(cri, ident)
        if kind == "pod":
            _remove_pod(cri, full)
        else:
            if opts.force:
                cri.call(cri.runtime.StopContainer, pb.StopContainerRequest(container_id=full))
            cri.call(cri.runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=full))
        print(full[:12])
    return 0


def cmd_info(opts) -> int:
    cri = _cri(opts)
    pb = cri.pb
    version = cri.call(cri.runtime.Version, pb.VersionRequest())
    status = cri.call(cri.runtime.Status, pb.StatusRequest(verbose=True))
    print(f"runtime: {version.runtime_name} {version.runtime_version} "
          f"(CRI {version.runtime_api_version})")
    for condition in status.status.conditions:
        mark = "yes" if condition.status else f"no ({condition.reason}: {condition.message})"
        print(f"{condition.type}: {mark}")
    print("runtime handlers: " + ", ".join(h.name for h in status.runtime_handlers))
    return 0
