"""corral-runtime: runc's command line over corral.runtime.

Exit status 1 and a one-line error (runc's log format) for every failure.
Imports are deferred to the command that needs them: start-up time is
most of a short command's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from corral.runtime.container import DEFAULT_ROOT

_SIGNALS_NOT_FORWARDED = ("SIGCHLD", "SIGKILL", "SIGSTOP", "SIGURG", "SIGWINCH")


class UsageError(Exception):
    pass


# --- logging (runc's format, so containerd can read our --log file) ------------------

class Log:
    def __init__(self) -> None:
        self.path: str | None = None
        self.format = "text"
        self.debug = False

    def _line(self, level: str, message: str) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.format == "json":
            return json.dumps({"level": level, "msg": message, "time": stamp})
        return f'time="{stamp}" level={level} msg={json.dumps(message)}'

    def write(self, level: str, message: str) -> None:
        if level == "debug" and not self.debug:
            return
        line = self._line(level, message) + "\n"
        if self.path:
            try:
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError:
                pass
        if level == "error" or not self.path:
            sys.stderr.write(line)


LOG = Log()


# --- commands --------------------------------------------------------------------------

def cmd_spec(args) -> int:
    from corral.spec.defaults import default_config

    path = os.path.join(args.bundle or ".", "config.json")
    if os.path.exists(path):
        raise UsageError("File config.json exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_config(rootless=args.rootless), f, indent="\t")
    return 0


def cmd_create(args) -> int:
    from corral.runtime.container import Container

    _refuse_console_socket(args)
    Container.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                     no_pivot=args.no_pivot, preserve_fds=args.preserve_fds)
    return 0


def cmd_start(args) -> int:
    from corral.runtime.container import Container

    Container.load(args.root, args.id).start()
    return 0


def cmd_run(args) -> int:
    import signal

    from corral.runtime import syscalls
    from corral.runtime.container import Container, wait_for_exit

    _refuse_console_socket(args)
    if not args.detach:
        # The init is reparented to us when its bootstrap exits, so we can wait for it.
        syscalls.Syscalls().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    container = Container.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                                 no_pivot=args.no_pivot, preserve_fds=args.preserve_fds)
    try:
        container.start()
    except BaseException:
        container.delete(force=True)
        raise
    if args.detach:
        return 0
    pid = container.state.pid
    for name in dir(signal):
        if name.startswith("SIG") and not name.startswith("SIG_") and (
                name not in _SIGNALS_NOT_FORWARDED):
            try:
                signal.signal(getattr(signal, name), lambda s, _f: _forward(pid, s))
            except (OSError, ValueError):
                pass
    status = wait_for_exit(pid)
    if not args.keep:
        container.delete(force=True)
    return status


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def cmd_state(args) -> int:
    from corral.runtime.container import Container

    state = Container.load(args.root, args.id).state.oci_state()
    print(json.dumps(state, indent=2))
    return 0


def cmd_list(args) -> int:
    from corral.runtime.errors import ContainerNotFound
    from corral.runtime.state import ContainerState, list_ids

    states = []
    for container_id in list_ids(args.root):
        try:
            states.append(ContainerState.load(args.root, container_id).oci_state())
        except ContainerNotFound:
            continue  # deleted while we listed
    if args.quiet:
        for state in states:
            print(state["id"])
    elif args.format == "json":
        print(json.dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
                 for s in states]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            print("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_kill(args) -> int:
    from corral.runtime.container import Container

    signum = parse_signal(args.signal)
    Container.load(args.root, args.id).kill(signum, all_processes=args.all)
    return 0


def cmd_delete(args) -> int:
    from corral.runtime.container import Container
    from corral.runtime.errors import ContainerNotFound

    try:
        container = Container.load(args.root, args.id)
    except ContainerNotFound:
        if args.force:
            return 0  # runc: delete --force of a missing container succeeds
        raise
    container.delete(force=args.force)
    return 0


def parse_signal(text: str) -> int:
    import signal

    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise UsageError(f"invalid signal: {text}")
        return number
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    value = getattr(signal, name, None)
    if not isinstance(value, signal.Signals):
        raise UsageError(f"unknown signal {text!r}")
    return int(value)


def _refuse_console_socket(args) -> None:
    if getattr(args, "console_socket", None):
        raise UsageError("--console-socket is not supported by this version of corral-runtime")


# --- argument parsing --------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral-runtime",
        description="Open Container Initiative runtime (runc-compatible), written in Python.")
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help="root directory for storage of container state")
    parser.add_argument("--log", help="log file path (errors are also written to stderr)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--debug", action="store_true", help="enable debug logging")
    parser.add_argument("--systemd-cgroup", action="store_true",
                        help="use systemd cgroups (not supported yet)")
    parser.add_argument("--rootless", default="auto", help="ignored; kept for runc compatibility")
    parser.add_argument("-v", "--version", action="version",
                        version="corral-runtime version 0.1.0\nspec: 1.2.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def container_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-b", "--bundle", default=".", help="path to the OCI bundle")
        sub.add_argument("--pid-file", help="file to write the init process's PID to")
        sub.add_argument("--console-socket", help="unix socket to send the pty master to")
        sub.add_argument("--no-pivot", action="store_true",
                         help="use MS_MOVE and chroot instead of pivot_root")
        sub.add_argument("--no-new-keyring", action="store_true",
                         help="accepted for runc compatibility")
        sub.add_argument("--preserve-fds", type=int, default=0,
                         help="pass N extra file descriptors (from fd 3) to the container")
        sub.add_argument("id")

    sub = command("spec", cmd_spec, "create a new specification file (config.json)")
    sub.add_argument("-b", "--bundle", help="directory to write config.json to")
    sub.add_argument("--rootless", action="store_true", help="a spec for a rootless container")

    container_options(command("create", cmd_create, "create a container"))
    command("start", cmd_start, "run the user process of a created container").add_argument("id")
    sub = command("run", cmd_run, "create and run a container")
    container_options(sub)
    sub.add_argument("-d", "--detach", action="store_true", help="detach from the container")
    sub.add_argument("--keep", action="store_true", help="do not delete the container on exit")
    command("state", cmd_state, "output the state of a container").add_argument("id")
    sub = command("list", cmd_list, "list containers started with the given root")
    sub.add_argument("-f", "--format", choices=("table", "json"), default="table")
    sub.add_argument("-q", "--quiet", action="store_true", help="display only container IDs")
    sub = command("kill", cmd_kill, "send a signal to a container's init (default SIGTERM)")
    sub.add_argument("-a", "--all", action="store_true",
                     help="send the signal to every process in the container")
    sub.add_argument("id")
    sub.add_argument("signal", nargs="?", default="SIGTERM")
    sub = command("delete", cmd_delete, "delete a container and everything it holds")
    sub.add_argument("-f", "--force", action="store_true",
                     help="kill the container first if it is still running")
    sub.add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    LOG.path, LOG.format, LOG.debug = args.log, args.log_format, args.debug
    if args.command is None:
        parser.print_help()
        return 0
    from corral.runtime.errors import RuntimeFailure

    try:
        if args.systemd_cgroup:
            raise UsageError("--systemd-cgroup is not supported yet: use the cgroupfs driver")
        return args.handler(args)
    except (RuntimeFailure, UsageError) as e:
        LOG.write("error", str(e))
    except OSError as e:
        LOG.write("error", f"{args.command}: {e.strerror or e}"
                  + (f": {e.filename}" if e.filename else ""))
    except KeyboardInterrupt:
        LOG.write("error", "interrupted")
    return 1


if __name__ == "__main__":
    sys.exit(main())
