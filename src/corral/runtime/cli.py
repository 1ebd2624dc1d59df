"""corral-runtime: runc's command line over corral.runtime.

runc's exit statuses (see main) and a one-line error in runc's log format for each failure.
Imports are deferred to the command that needs them: start-up time is
most of a short command's cost.
"""

from __future__ import annotations

import os
import sys

from corral.runtime.cliargs import (
    Command,
    HelpRequested,
    IncorrectUsage,
    Option,
    UsageError,
    command_usage,
    parse_command,
    parse_options,
    usage,
)
from corral.spec import fastjson

DEFAULT_ROOT = "/run/corral-runtime"

_SIGNALS_NOT_FORWARDED = ("SIGCHLD", "SIGKILL", "SIGSTOP", "SIGURG", "SIGWINCH")


# --- logging (runc's format, so containerd can read our --log file) ------------------

class Log:
    """logrus's two formats, as runc writes them: to --log if given, else to stderr."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.format = "text"
        self.debug = False

    def _line(self, level: str, message: str) -> str:
        import time

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.format == "json":
            # logrus's JSONFormatter: compact, keys sorted.
            return fastjson.dumps({"level": level, "msg": message, "time": stamp})
        quoted = message.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'time="{stamp}" level={level} msg="{quoted}"'

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
            if level in ("error", "fatal"):
                sys.stderr.write(message + "\n")  # runc's fatal(): the bare error too
            return
        sys.stderr.write(line)


LOG = Log()


# --- commands --------------------------------------------------------------------------

def cmd_spec(args) -> int:
    import json

    from corral.spec.defaults import default_config

    path = os.path.join(args.bundle or ".", "config.json")
    if os.path.exists(path):
        raise UsageError("File config.json exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_config(rootless=args.rootless), f, indent="\t")
    return 0


def _undo_on_signals() -> None:
    """Turn TERM, INT and HUP into an exception, so a create cut short cleans up.

    `_signal` is built in (no import cost); the forked init inherits the
    handlers until it replaces them before exec.
    """
    import _signal

    from corral.runtime.errors import Interrupted

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    for signum in (1, 2, 15):  # HUP, INT, TERM
        _signal.signal(signum, interrupt)


def cmd_create(args) -> int:
    from corral.runtime.container import Container

    _undo_on_signals()
    check_console_use(_wants_terminal(args.bundle), True, args.console_socket)
    Container.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                     no_pivot=args.no_pivot, preserve_fds=args.preserve_fds,
                     console_socket=args.console_socket, listen_fds=_listen_fds(),
                     warn=_warn)
    return 0


def cmd_start(args) -> int:
    from corral.runtime.container import Container

    Container.load(args.root, args.id).start(warn=_warn)
    return 0


def cmd_run(args) -> int:
    """create + start; in the foreground, wait and pass the exit status (and signals) on."""
    from corral.runtime import syscalls
    from corral.runtime.container import Container, wait_for_exit

    _undo_on_signals()
    if not args.detach:
        # The init is reparented to us when its bootstrap exits, so we can wait for it.
        syscalls.Syscalls().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    console_socket, terminal = _console_for(_wants_terminal(args.bundle), args.detach,
                                            args.console_socket)
    try:
        container = Container.create(args.root, args.id, args.bundle, pid_file=args.pid_file,
                                     no_pivot=args.no_pivot, preserve_fds=args.preserve_fds,
                                     console_socket=console_socket, listen_fds=_listen_fds(),
                                     warn=_warn)
    except BaseException:
        if terminal:
            terminal.abandon()
        raise
    try:
        if terminal:
            terminal.attach()  # the pty's size and modes are set before the process runs
        container.start()
    except BaseException:
        if terminal:
            terminal.abandon()
        container.delete(force=True)
        raise
    if args.detach:
        return 0
    pid = container.state.pid
    _forward_signals_to(pid)
    if terminal:
        terminal.relay(pid)
    status = wait_for_exit(pid)
    LOG.write("debug", f"process exited: pid={pid} status={status}")
    if not args.keep:
        container.delete(force=True)
    return status


def check_console_use(terminal: bool, detach: bool, console_socket: str | None) -> None:
    """runc's rules: a detached terminal needs a console socket, and a console socket is
    only for a detached terminal (in the foreground the runtime relays it itself)."""
    if detach and terminal and not console_socket:
        raise UsageError("cannot allocate tty if the runtime will detach without setting "
                         "console socket")
    if console_socket and not (detach and terminal):
        raise UsageError("cannot use console socket if the runtime will not detach or "
                         "allocate tty")


def _console_for(terminal: bool, detach: bool, console_socket: str | None):
    """The console socket to hand the container, and our own ForegroundTerminal when we
    are to relay the pty to the caller's terminal (None otherwise)."""
    check_console_use(terminal, detach, console_socket)
    if not terminal or detach:
        return console_socket, None
    from corral.runtime.tty import ForegroundTerminal

    relay = ForegroundTerminal()
    return relay.path, relay


def _wants_terminal(bundle: str) -> bool:
    """process.terminal, read cheaply; create validates the whole config later."""
    try:
        config = fastjson.loads(_read(os.path.join(bundle, "config.json")))
        return config.get("process", {}).get("terminal") is True
    except (OSError, ValueError, AttributeError):
        return False


def _listen_fds() -> int:
    """Socket-activation fds meant for us (LISTEN_PID is our PID), as sd_listen_fds counts."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return 0
        return max(int(os.environ.get("LISTEN_FDS", "0")), 0)
    except ValueError:
        return 0


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def cmd_state(args) -> int:
    import json

    from corral.runtime.container import Container

    state = Container.load(args.root, args.id).state.oci_state()
    sys.stdout.write(json.dumps(state, indent=2))  # runc's MarshalIndent: no newline after
    return 0


def cmd_list(args) -> int:
    from corral.runtime.errors import ContainerNotFound
    from corral.runtime.state import ContainerState, list_ids

    if args.format not in ("table", "json"):
        raise UsageError("invalid format option")
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
        print(fastjson.dumps(states or None))  # compact; "null" for none, as runc
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
                 for s in states]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        for row in rows:
            print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_kill(args) -> int:
    from corral.runtime.container import Container

    container = Container.load(args.root, args.id)
    signum = parse_signal(args.signal or "SIGTERM")
    try:
        container.kill(signum, all_processes=args.all)
    except OSError as e:  # a number the kernel refuses (EINVAL)
        raise UsageError(f"unable to signal init: {(e.strerror or str(e)).lower()}") from None
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
    container.delete(force=args.force, warn=_warn)
    return 0


# Linux x86/arm signal numbers (real-time signals by number only), so that
# parsing one does not import the signal module and its enums.
SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
    "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
    "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21,
    "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
    "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}


def cmd_exec(args) -> int:
    """runc exec: another process in a running container; its exit status passes through."""
    from corral.runtime import syscalls
    from corral.runtime.container import Container, wait_for_exit, write_pid_file

    container = Container.load(args.root, args.id)
    process = exec_process(args, container.state.process)
    if not args.detach:
        # The process is the bootstrap's child; orphaned, it comes to us to be reaped.
        syscalls.Syscalls().prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    console_socket, terminal = _console_for(process.terminal, args.detach,
                                            args.console_socket)
    if terminal and process.console_size is None:
        # The process runs at once: it takes the caller's size from the start.
        process.console_size = terminal.window_size()
    try:
        pid = container.exec(process, preserve_fds=args.preserve_fds,
                             console_socket=console_socket,
                             sub_cgroups=sub_cgroup_paths(args.cgroup),
                             ignore_paused=args.ignore_paused)
    except BaseException:
        if terminal:
            terminal.abandon()
        raise
    if args.pid_file:
        write_pid_file(args.pid_file, pid)
    if args.detach:
        return 0
    _forward_signals_to(pid)
    if terminal:
        terminal.relay(pid)
    status = wait_for_exit(pid)
    LOG.write("debug", f"process exited: pid={pid} status={status}")
    return status


def sub_cgroup_paths(values: list[str]) -> dict[str, str]:
    """exec --cgroup values as controller → path below the container's cgroup; a lone
    PATH without a controller ("" key) is for every hierarchy (runc's rules)."""
    paths: dict[str, str] = {}
    for value in values:
        parts = value.split(":")
        if len(parts) > 2:
            raise UsageError(f"invalid --cgroup argument: {value}")
        if len(parts) == 1:
            if len(values) != 1:
                raise UsageError(f"invalid --cgroup argument: {value} "
                                 f"(missing <controller>: prefix)")
            paths[""] = value
            continue
        for controller in parts[0].split(","):
            paths[controller] = parts[1]
    return paths


def exec_process(args, container_process: dict):
    """The exec'd process: --process JSON, or the container's process changed by the flags."""
    from corral.spec.runtime import Process, SpecError

    if args.process:
        try:
            raw = fastjson.loads(_read(args.process))
        except ValueError as e:
            raise UsageError(f"--process {args.process}: invalid JSON: {e}") from None
        if args.command:
            raise UsageError("give either --process or a command, not both")
    else:
        if not args.command:
            raise UsageError("process args cannot be empty")
        raw = dict(container_process, args=args.command, terminal=args.tty)
        raw["env"] = [*raw.get("env", []), *args.env]
        if args.cwd:
            raw["cwd"] = args.cwd
        if args.user:
            uid, _, gid = args.user.partition(":")
            raw["user"] = {"uid": _int(uid, "user"), "gid": _int(gid or "0", "user")}
        if args.additional_gids:
            user = dict(raw.get("user", {}))
            user["additionalGids"] = [_int(g, "additional_gids") for g in args.additional_gids]
            raw["user"] = user
        if args.cap:
            caps = {k: list(v) for k, v in raw.get("capabilities", {}).items()}
            for name in ("bounding", "effective", "permitted"):
                caps[name] = [*caps.get(name, []), *args.cap]
            raw["capabilities"] = caps
        if args.no_new_privs:
            raw["noNewPrivileges"] = True
        if args.apparmor:
            raw["apparmorProfile"] = args.apparmor
        if args.process_label:
            raw["selinuxLabel"] = args.process_label
    try:
        return Process.parse(raw, "process")
    except SpecError as e:
        raise UsageError(str(e)) from None


def _forward_signals_to(pid: int) -> None:
    """Pass every catchable signal the runtime gets on to the container's process."""
    import signal

    for name in dir(signal):
        if name.startswith("SIG") and not name.startswith("SIG_") and (
                name not in _SIGNALS_NOT_FORWARDED):
            try:
                signal.signal(getattr(signal, name), lambda s, _f: _forward(pid, s))
            except (OSError, ValueError):
                pass


def cmd_pause(args) -> int:
    from corral.runtime.container import Container

    Container.load(args.root, args.id).pause()
    return 0


def cmd_resume(args) -> int:
    from corral.runtime.container import Container

    Container.load(args.root, args.id).resume()
    return 0


def cmd_ps(args) -> int:
    """runc's ps: the container's PIDs as JSON, or the host's `ps` lines for them."""
    import subprocess

    from corral.runtime.container import Container

    pids = Container.load(args.root, args.id).processes()
    if args.format == "json":
        print(fastjson.dumps(pids))
        return 0
    if args.format != "table":
        raise UsageError("invalid format option")
    listing = subprocess.run(["ps", *(args.ps_options or ["-ef"])], capture_output=True,
                             text=True)
    if listing.returncode != 0:
        raise UsageError(f"ps {' '.join(args.ps_options)}: {listing.stderr.strip()}")
    header, *lines = listing.stdout.splitlines()
    try:
        column = header.split().index("PID")
    except ValueError:
        raise UsageError("couldn't find PID field in ps output") from None
    wanted = set(pids)
    print(header)
    for line in lines:
        fields = line.split()
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in wanted:
            print(line)
    return 0


def cmd_update(args) -> int:
    """runc update: linux.resources from -r JSON (then the other flags are ignored, as
    runc says), or from the flags; an unset value (0, absent) is left as it is."""
    from corral.runtime.container import Container

    container = Container.load(args.root, args.id)
    _refuse_intel_rdt(args)
    resources = _update_json(args.resources) if args.resources else _update_flags(args)
    memory = resources.get("memory")
    if isinstance(memory, dict) and (memory.get("kernel") or memory.get("kernelTCP")):
        _warn("Kernel memory settings are ignored and will be removed")
    container.update(resources)
    return 0


def _update_json(source: str) -> dict:
    text = sys.stdin.read() if source == "-" else _read(source)
    try:
        resources = fastjson.loads(text)
    except ValueError as e:
        raise UsageError(f"--resources: invalid JSON: {e}") from None
    if not isinstance(resources, dict):
        raise UsageError("--resources: expected a JSON object (linux.resources)")
    return resources


def _update_flags(args) -> dict:
    resources: dict = {}
    for flag, (section, key, parse) in UPDATE_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            resources.setdefault(section, {})[key] = parse(value, flag)
    return resources


def _refuse_intel_rdt(args) -> None:
    """Intel RDT schemas: runc's error where resctrl is missing; corral has no RDT support."""
    for flag, feature in (("l3_cache_schema", "CAT: l3 cache schema"),
                          ("mem_bw_schema", "MBA: memory bandwidth schema")):
        if getattr(args, flag) is None:
            continue
        if not os.path.isdir("/sys/fs/resctrl/info"):
            raise UsageError(f"Intel RDT/{feature} is not enabled")
        raise UsageError(f"--{flag.replace('_', '-')}: Intel RDT is not supported by "
                         f"{PROG}")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _bytes(text: str, flag: str) -> int:
    """Sizes as runc (go-units' RAMInBytes) takes them: 1024, 100k, 50M, 1.5g, 2 GiB
    (binary units, case ignored); -1 is unlimited."""
    if text == "-1":
        return -1
    number = text.rstrip("kKmMgGtTpPiIbB ")
    suffix = text[len(number):].lower().removeprefix(" ")
    unit = suffix.removesuffix("b").removesuffix("i")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}.get(unit)
    whole, _, fraction = number.partition(".")
    if scale is None or not (whole.isascii() and whole.isdigit()) or (
            "." in number and not (fraction.isascii() and fraction.isdigit())):
        raise UsageError(f"invalid value for {flag.replace('_', '-')}: invalid size: "
                         f"{text!r}")
    return int(float(number) * scale) if fraction else int(whole) * scale


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--{flag.replace('_', '-')}: not a number: {text!r}") from None


def _text(text: str, _flag: str) -> str:
    return text


# runc update's flags → (linux.resources section, key, parser)
UPDATE_FLAGS = {
    "memory": ("memory", "limit", _bytes),
    "memory_reservation": ("memory", "reservation", _bytes),
    "memory_swap": ("memory", "swap", _bytes),
    "cpu_shares": ("cpu", "shares", _int),  # --cpu-share, runc's spelling
    "cpu_quota": ("cpu", "quota", _int),
    "cpu_period": ("cpu", "period", _int),
    "cpu_rt_period": ("cpu", "realtimePeriod", _int),
    "cpu_rt_runtime": ("cpu", "realtimeRuntime", _int),
    "cpuset_cpus": ("cpu", "cpus", _text),
    "cpuset_mems": ("cpu", "mems", _text),
    "blkio_weight": ("blockIO", "weight", _int),
    "pids_limit": ("pids", "limit", _int),
    "kernel_memory": ("memory", "kernel", _bytes),
    "kernel_memory_tcp": ("memory", "kernelTCP", _bytes),
}


def cmd_events(args) -> int:
    """runc events: stats once (--stats), or stats every --interval and OOM events."""
    from corral.runtime.container import Container
    from corral.runtime.events import follow, parse_duration, stats_event

    container = Container.load(args.root, args.id)
    if container.state.status() == "stopped":
        raise UsageError("container is stopped")
    cgroup = container.require_cgroup("read events")
    if args.stats:
        print(fastjson.dumps(stats_event(args.id, cgroup)))
        return 0
    try:
        interval = parse_duration(args.interval)
    except ValueError:
        raise UsageError(f"--interval: invalid duration {args.interval!r}") from None
    if interval <= 0:
        raise UsageError("--interval: must be positive")

    def write(line: str) -> None:
        print(line, flush=True)

    follow(args.id, cgroup, container.state.init_alive, interval, write)
    return 0


def cmd_checkpoint(args) -> int:
    from corral.runtime import checkpoint
    from corral.runtime.container import Container

    container = Container.load(args.root, args.id)
    images = checkpoint.image_dir(args.image_path)
    checkpoint.checkpoint(container, criu=args.criu, images=images, parent=args.parent_path,
                          manage_cgroups_mode=args.manage_cgroups_mode,
                          empty_ns=args.empty_ns, page_server=args.page_server)
    return 0


def cmd_restore(args) -> int:
    from corral.runtime import checkpoint

    images = checkpoint.image_dir(args.image_path)
    checkpoint.restore(args.root, args.id, args.bundle or ".", criu=args.criu, images=images,
                       manage_cgroups_mode=args.manage_cgroups_mode, empty_ns=args.empty_ns)
    return 0


def _criu_options() -> list[Option]:
    """The flags checkpoint and restore share (runc's)."""
    return [
        Option("--work-path", "path for saving work files and logs", value="DIR"),
        Option("--tcp-established", "allow open tcp connections"),
        Option("--ext-unix-sk", "allow external unix sockets"),
        Option("--shell-job", "allow shell jobs"),
        Option("--file-locks", "handle file locks, for safety"),
        Option("--manage-cgroups-mode", "cgroups mode: 'soft' (default), 'full' and 'strict'",
               value="MODE"),
        Option("--empty-ns", "create a namespace, but don't restore its properties",
               value="NS", multiple=True),
        Option("--auto-dedup", "enable auto deduplication of memory images"),
        Option("--lazy-pages", "use userfaultfd to lazily restore memory pages"),
    ]


def cmd_features(args) -> int:
    import json

    from corral.runtime.features import features

    print(json.dumps(features(), indent=4))
    return 0


def _warn(message: str) -> None:
    LOG.write("warning", message)


def parse_signal(text: str) -> int:
    """A name (KILL, SIGKILL) or any number, as runc: the kernel judges the number
    (0 only checks that the process exists)."""
    if text.isdigit():
        return int(text)
    name = text.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise UsageError(f'unknown signal "{text}"')
    return SIGNALS[name]


# --- command table ----------------------------------------------------------------------

def _container_options() -> list[Option]:
    return [
        Option("-b,--bundle", "path to the OCI bundle", value="DIR", default="."),
        Option("--pid-file", "file to write the init process's PID to", value="FILE"),
        Option("--console-socket", "unix socket to send the pty master to", value="PATH"),
        Option("--no-pivot", "use MS_MOVE and chroot instead of pivot_root"),
        Option("--no-new-keyring", "accepted for runc compatibility"),
        Option("--preserve-fds", "pass N extra file descriptors (from fd 3) to the container",
               value="N", default=0, convert=int),
    ]


GLOBAL_OPTIONS = [
    Option("--debug", "enable debug logging"),
    Option("--log", "set the log file to write the runtime's logs to (default is "
           "'/dev/stderr'; errors go to stderr too)", value="FILE"),
    Option("--log-format", "set the log format ('text' (default), or 'json')",
           value="FORMAT", default="text"),
    Option("--root", "root directory for storage of container state (this should be "
           "located in tmpfs)", value="DIR", default=DEFAULT_ROOT),
    Option("--criu", "path to the criu binary used for checkpoint and restore",
           value="PATH", default="criu"),
    Option("--systemd-cgroup", "use systemd cgroups (not supported yet)"),
    Option("--rootless", "ignored; kept for runc compatibility", value="MODE", default="auto"),
    Option("-v,--version", "print the version"),
]

_ID_ARG = "<container-id>"

COMMANDS = [
    Command("checkpoint", "checkpoint a running container", cmd_checkpoint, [
        Option("--image-path", "path for saving criu image files (default: ./checkpoint)",
               value="DIR"),
        Option("--parent-path", "path for previous criu image files in pre-dump",
               value="DIR"),
        Option("--leave-running", "leave the process running after checkpointing"),
        Option("--status-fd", "criu writes \\0 to this FD once lazy-pages is ready",
               value="FD", default=-1, convert=int),
        Option("--page-server", "ADDRESS:PORT of the page server", value="ADDRESS"),
        Option("--pre-dump", "dump container's memory information only, leave the "
               "container running after this"),
        *_criu_options()], ("id",), args_usage=_ID_ARG,
        description="The checkpoint command saves the state of the container instance "
        "(with CRIU)."),
    Command("restore", "restore a container from a previous checkpoint", cmd_restore, [
        Option("--console-socket", "unix socket to send the pty master to", value="PATH"),
        Option("--image-path", "path to criu image files for restoring (default: "
               "./checkpoint)", value="DIR"),
        Option("-b,--bundle", "path to the root of the bundle directory", value="DIR"),
        Option("-d,--detach", "detach from the container's process"),
        Option("--pid-file", "specify the file to write the process id to", value="FILE"),
        Option("--no-subreaper", "accepted for runc compatibility"),
        Option("--no-pivot", "use MS_MOVE and chroot instead of pivot_root"),
        Option("--lsm-profile", "LSM profile for the restore, as TYPE:NAME", value="PROFILE"),
        Option("--lsm-mount-context", "LSM mount context for the restore", value="CONTEXT"),
        *_criu_options()], ("id",), args_usage=_ID_ARG,
        description="Restores the saved state of the container instance that was "
        "previously saved\nusing the checkpoint command."),
    Command("spec", "create a new specification file", cmd_spec, [
        Option("-b,--bundle", "directory to write config.json to", value="DIR"),
        Option("--rootless", "a spec for a rootless container")]),
    Command("create", "create a container", cmd_create, _container_options(), ("id",),
            args_usage=_ID_ARG, description="The create command creates an instance of "
            "a container for a bundle, its init waiting\nfor `start` to run the user "
            "process."),
    Command("start", "executes the user defined process in a created container", cmd_start,
            [], ("id",), args_usage=_ID_ARG),
    Command("run", "create and run a container", cmd_run, [
        *_container_options(),
        Option("-d,--detach", "detach from the container"),
        Option("--keep", "do not delete the container when it exits"),
        Option("--no-subreaper", "accepted for runc compatibility (the runtime reaps the "
               "container's init itself)")], ("id",),
        args_usage=_ID_ARG, description="The run command creates an instance of a container "
        "for a bundle and runs its process;\nin the foreground, the runtime waits for it and "
        "exits with its status."),
    Command("state", "output the state of a container", cmd_state, [], ("id",),
            args_usage=_ID_ARG,
            description="The state command outputs current state information for the\n"
            "instance of a container."),
    Command("list", "lists containers started with the given root", cmd_list, [
        Option("-f,--format", "table or json", value="FORMAT", default="table"),
        Option("-q,--quiet", "display only container IDs")]),
    Command("kill", "kill sends the specified signal (default: SIGTERM) to the container's "
            "init process", cmd_kill, [
        Option("-a,--all", "send the signal to every process in the container")],
        ("id",), optional=("signal",), args_usage="<container-id> [signal]"),
    Command("exec", "execute new process inside the container", cmd_exec, [
        Option("-p,--process", "a process.json describing the process", value="FILE"),
        Option("-t,--tty", "allocate a pseudo-TTY"),
        Option("-d,--detach", "detach from the process"),
        Option("--pid-file", "file to write the process's PID to", value="FILE"),
        Option("-e,--env", "set an environment variable (KEY=VALUE)", value="ENV",
               multiple=True),
        Option("--cwd", "working directory in the container", value="DIR"),
        Option("-u,--user", "UID[:GID] to run as", value="USER"),
        Option("-g,--additional-gids", "an additional group ID", value="GID", multiple=True),
        Option("-c,--cap", "add a capability (e.g. CAP_NET_ADMIN)", value="CAP",
               multiple=True),
        Option("--no-new-privs", "set no_new_privs for the process"),
        Option("--preserve-fds", "pass N extra file descriptors (from fd 3)", value="N",
               default=0, convert=int),
        Option("--console-socket", "unix socket to send the pty master to", value="PATH"),
        Option("--process-label", "SELinux label (not supported)", value="LABEL"),
        Option("--apparmor", "AppArmor profile (not supported)", value="PROFILE"),
        Option("--cgroup", "join an existing sub-cgroup: [CONTROLLER[,CONTROLLER]:]PATH",
               value="PATH", multiple=True),
        Option("--ignore-paused", "allow exec in a paused container")],
        ("id",), rest="command", failure_status=255,
        args_usage="<container-id> <command> [command options]  || -p process.json "
        "<container-id>"),
    Command("pause", "pause suspends all processes inside the container", cmd_pause,
            [], ("id",), args_usage=_ID_ARG),
    Command("resume", "resumes all processes that have been previously paused", cmd_resume,
            [], ("id",), args_usage=_ID_ARG),
    Command("ps", "ps displays the processes running inside a container", cmd_ps, [
        Option("-f,--format", "table or json", value="FORMAT", default="table")],
        ("id",), rest="ps_options", args_usage="<container-id> [ps options]"),
    Command("update", "update container resource constraints", cmd_update, [
        Option("-r,--resources", "a linux.resources JSON file ('-' for stdin)", value="FILE"),
        Option("--memory", "memory limit (e.g. 64m)", value="SIZE"),
        Option("--memory-reservation", "memory soft limit", value="SIZE"),
        Option("--memory-swap", "memory plus swap limit", value="SIZE"),
        Option("--kernel-memory", "ignored, as by runc", value="SIZE"),
        Option("--kernel-memory-tcp", "ignored, as by runc", value="SIZE"),
        Option("--cpu-share,--cpu-shares", "CPU shares (relative weight)", value="N"),
        Option("--cpu-quota", "CPU CFS quota in microseconds", value="N"),
        Option("--cpu-period", "CPU CFS period in microseconds", value="N"),
        Option("--cpu-rt-period", "CPU realtime period", value="N"),
        Option("--cpu-rt-runtime", "CPU realtime runtime", value="N"),
        Option("--cpuset-cpus", "CPUs to use (e.g. 0-1)", value="LIST"),
        Option("--cpuset-mems", "memory nodes to use", value="LIST"),
        Option("--blkio-weight", "block IO weight (10-1000)", value="N"),
        Option("--pids-limit", "maximum number of processes", value="N"),
        Option("--l3-cache-schema", "Intel RDT/CAT L3 cache schema", value="SCHEMA"),
        Option("--mem-bw-schema", "Intel RDT/MBA memory bandwidth schema", value="SCHEMA")],
        ("id",)),
    Command("events", "display container events such as OOM notifications, cpu, memory, "
            "and IO usage statistics", cmd_events, [
        Option("--stats", "print the stats once and exit"),
        Option("--interval", "how often to print stats (e.g. 5s, 500ms)", value="DURATION",
               default="5s")], ("id",), args_usage=_ID_ARG),
    Command("features", "show the enabled features", cmd_features),
    Command("delete", "delete any resources held by the container often used with "
            "detached container", cmd_delete, [
        Option("-f,--force", "kill the container first if it is still running (SIGKILL)")],
        ("id",), args_usage=_ID_ARG),
]

PROG = "corral-runtime"
# The command line is runc's: help and --version name it so, as tools that parse
# runc's output (and runc's own test suite) expect; corral-runtime's own name follows.
INTERFACE = "runc"
SPEC_VERSION = "1.2.0"
ABOUT = "Open Container Initiative runtime (corral-runtime, in Python)"
DESCRIPTION = f"""{PROG} runs containers packaged as OCI bundles, with runc's commands, flags,
output and exit statuses: it can stand in for runc under containerd, podman or docker.

A bundle is a directory holding a specification file, "config.json", and a root
filesystem.  To run a container from the bundle in the current directory:

    # {PROG} run [ -b bundle ] <container-id>

The container ID is your name for the instance; it must be unique under --root."""


def version_text() -> str:
    return (f"{INTERFACE} version 1.1.5-compatible ({PROG} 0.1.0)\n"
            f"commit: {PROG}-0.1.0\nspec: {SPEC_VERSION}\npython: {sys.version.split()[0]}")


def app_help() -> str:
    return usage(INTERFACE, PROG, ABOUT, DESCRIPTION, version_text(), GLOBAL_OPTIONS,
                 COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """runc's exit statuses: 0; the command's own (run, exec: the process's); 1 for a
    failure or a usage error; 255 for a failed exec; 3 for an unknown command."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, rest = parse_options(argv, GLOBAL_OPTIONS, stop_at_positional=True)
    except HelpRequested:
        print(app_help())
        return 0
    except IncorrectUsage as e:
        print(f"Incorrect Usage. {e}\n\n{app_help()}")
        LOG.write("error", str(e))
        return 1
    LOG.path, LOG.debug = options["log"], options["debug"]
    LOG.format = "json" if options["log_format"] == "json" else "text"
    if LOG.debug:
        from corral.runtime.process.sync import SyncChannel

        SyncChannel.debug_sink = lambda message: LOG.write("debug", message)
    if options["version"]:
        print(version_text())
        return 0
    if not rest:
        print(app_help())
        return 0
    if rest[0] in ("help", "h"):
        return _help(rest[1:])
    command = next((c for c in COMMANDS if c.name == rest[0]), None)
    if command is None:
        LOG.write("error", f"No help topic for '{rest[0]}'")
        return 3
    try:
        args = parse_command(command, rest[1:])
    except HelpRequested:
        print(command_usage(INTERFACE, PROG, command))
        return 0
    except IncorrectUsage as e:
        header = f"Incorrect Usage: {e}" if e.flag else "Incorrect Usage."
        print(f"{header}\n\n{command_usage(INTERFACE, PROG, command)}")
        LOG.write("error", str(e) if e.flag else f"{PROG}: {e}")
        return 1
    except UsageError as e:
        LOG.write("error", str(e))
        return 1
    args.root = options["root"]
    args.criu = options["criu"]
    return _run(command, args, systemd=options["systemd_cgroup"])


def _help(topics: list[str]) -> int:
    """`help` and `help COMMAND`, as urfave/cli answers them."""
    if not topics:
        print(app_help())
        return 0
    command = next((c for c in COMMANDS if c.name == topics[0]), None)
    if command is None:
        LOG.write("error", f"No help topic for '{topics[0]}'")
        return 3
    print(command_usage(INTERFACE, PROG, command))
    return 0


def _run(command: Command, args, *, systemd: bool) -> int:
    """The command's handler; a failure is one line in the log and runc's status for it."""
    prefix = "exec failed: " if command.failure_status == 255 else ""
    try:
        if systemd:
            raise UsageError("--systemd-cgroup is not supported yet: use the cgroupfs driver")
        return command.handler(args)
    except UsageError as e:
        LOG.write("error", prefix + str(e))
    except KeyboardInterrupt:
        LOG.write("error", prefix + "interrupted")
    except Exception as e:  # noqa: BLE001 - the edge: one line, never a traceback
        from corral.runtime.errors import RuntimeFailure

        if isinstance(e, RuntimeFailure):
            LOG.write("error", prefix + str(e))
        elif isinstance(e, OSError):
            LOG.write("error", f"{prefix}{command.name}: {e.strerror or e}"
                      + (f": {e.filename}" if e.filename else ""))
        else:
            LOG.write("error", f"{prefix}{command.name}: internal error: "
                      f"{type(e).__name__}: {e}")
    return command.failure_status


if __name__ == "__main__":
    sys.exit(main())
