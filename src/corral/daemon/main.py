"""`corrald`: serve the CRI on a Unix socket until SIGTERM; containers outlive it.

    corrald [--config FILE] [--root DIR] [--state DIR] [--listen unix:///PATH]
            [--log-level LEVEL]

Start-up: load the config, lock the root, state dir and socket (lock.py: a
second daemon on any of them exits 1 and touches nothing), open the store,
recover (recovery.py), listen.
Ready means the socket accepts and `Status` answers; with `--ready-fd N`
corrald also writes "ready\\n" to fd N then (for tests and supervisors),
and it notifies systemd (NOTIFY_SOCKET) if started by it.  SIGTERM/SIGINT
stop serving (in-flight calls get a grace period) and exit; shims and
containers keep running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corrald", description="corral's CRI daemon")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--root", help="persistent data (images, metadata)")
    parser.add_argument("--state", help="runtime state (shims, namespaces, bundles)")
    parser.add_argument("--listen", help="unix:///path/to/corral.sock")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    from corral.daemon import config as config_module

    try:
        config = config_module.load(opts.config, root=opts.root, state=opts.state,
                                    listen=opts.listen, log_level=opts.log_level)
    except config_module.ConfigError as e:
        print(f"corrald: {e}", file=sys.stderr)
        return 1
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    log = logging.getLogger("corrald")

    import grpc
    from cri_api.v1 import api_pb2_grpc

    from corral.cri.server import ImageService, RuntimeService
    from corral.daemon.context import Context
    from corral.daemon.lock import DaemonLocked, claim_socket, hold_daemon_locks
    from corral.daemon.recovery import recover

    socket_path = config.socket_path
    try:
        # Before anything is recovered or listened on: another daemon's are not ours to touch.
        locks = hold_daemon_locks(config.root, config.state, socket_path)
        claim_socket(socket_path)
    except (DaemonLocked, OSError) as e:
        print(f"corrald: {e}", file=sys.stderr)
        return 1
    try:
        ctx = Context(config)
        recover(ctx)
        ctx.streaming = _streaming_server(ctx, config)
    except Exception as e:  # noqa: BLE001 - one clear line, then the details in the log
        log.exception("start-up failed")
        print(f"corrald: {e}", file=sys.stderr)
        return 1

    server = grpc.server(_thread_pool(), options=[
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 32 << 20)])
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeService(ctx), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(ctx), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    os.chmod(socket_path, 0o660)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("serving CRI on unix://%s (root %s, state %s)", socket_path, config.root,
             config.state)
    _announce_ready(opts.ready_fd)
    _build_vm_templates(config, log)
    ctx.pools.start()
    # Waited for in slices: the kernel may deliver SIGTERM to any of the gRPC threads, and
    # then only the main thread's next wake-up runs the handler (a wait without a timeout,
    # blocked in the kernel, would never see it: corrald ignored SIGTERM now and then).
    while not stopping.wait(0.25):
        pass
    log.info("stopping: containers keep running")
    server.stop(grace=5).wait()
    ctx.streaming.stop()
    ctx.close()
    _remove_vm_templates(config)
    try:
        os.unlink(socket_path)  # ours: the socket's lock is held until we exit
    except FileNotFoundError:
        pass
    for fd in locks:
        os.close(fd)
    return 0


def _build_vm_templates(config, log) -> None:
    """For each offered vm handler with `template_at_start`: its VM template built in the
    background now, so that the first pod restores one instead of waiting for the build
    (~10 s under TCG).  A pod that comes first waits on the same build (its flock)."""
    from corral.shim.handlers import vm_memory_mib

    def build(spec) -> None:
        from corral.vm.errors import VmError
        from corral.vm.pod import build_template

        options = spec.options
        try:
            made = build_template(cache_dir=options["cache_dir"],
                                  template_dir=options["template_dir"],
                                  memory_mib=vm_memory_mib(options),
                                  cpus=int(options.get("cpus") or 1),
                                  kernel_version=options.get("kernel") or None)
        except (VmError, OSError) as e:
            log.warning("runtime %s: the VM template was not built at start: %s", spec.name,
                        str(e).splitlines()[0])
            return
        log.info("runtime %s: VM template %s ready", spec.name, made.key)

    for spec in config.runtimes.values():
        if spec.type == "vm" and spec.options.get("templates", True) and \
                spec.options.get("template_at_start") and not spec.unavailable():
            threading.Thread(target=build, args=(spec,), name=f"template-{spec.name}",
                             daemon=True).start()


def _remove_vm_templates(config) -> None:
    """VM templates are this corrald's: gone with it (each holds a guest's RAM on tmpfs).
    Running pods keep what they map; the next corrald builds them again."""
    from corral.vm.template import remove_all

    for spec in config.runtimes.values():
        if spec.type == "vm" and spec.options.get("templates", True) and \
                spec.options.get("template_dir"):
            remove_all(spec.options["template_dir"])


def _streaming_server(ctx, config):
    """The HTTP server of Exec/Attach/PortForward URLs (cri/streaming), started."""
    from corral.cri.streaming.server import StreamServer

    try:
        streaming = StreamServer(ctx, config.stream.address, config.stream.port,
                                 config.stream.idle_timeout)
    except OSError as e:
        raise OSError(f"streaming server on {config.stream.address}:{config.stream.port}: "
                      f"{e.strerror or e}") from None
    streaming.start()
    return streaming


def _thread_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="cri")


def _announce_ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        address = "\0" + notify[1:] if notify.startswith("@") else notify
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(b"READY=1", address)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
