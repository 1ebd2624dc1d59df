"""The detached container lifecycle, side by side across runc-compatible runtimes.

Each cycle is what a high-level runtime does for a short-lived container, every
step a fresh exec of the runtime binary:

    RT --root R create --bundle B --pid-file P ID
    RT --root R start ID
    (wait until the container's init has exited)
    RT --root R delete ID

Runtimes take turns within each iteration (the starting one rotates), so drift
in the machine's state spreads over all of them. crun 1.8 refuses this host's
hybrid cgroup layout unless the cgroup2 controllers file reads empty, so crun's
loop runs in a worker process inside a private mount namespace in which an
empty file is bind-mounted over that file; the host's mount table is untouched.
(bench/exec.py reuses that worker, the runner loop and the reporting helpers.)

`--profile cri` gives the container what containerd would: its 14 default
capabilities and the default seccomp profile (see bench/cri_profile.py).

    .venv/bin/python bench/lifecycle.py [-n K] [--runtimes corral-runtime,runc,crun]
                                        [--profile default|cri] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cri_profile import ProfileError, apply_cri_profile

UNIFIED_CONTROLLERS = "/sys/fs/cgroup/unified/cgroup.controllers"
STEPS = ("create", "start", "wait", "delete")
STEP_TIMEOUT = 30.0
PR_SET_CHILD_SUBREAPER = 36
DEFAULT_RUNTIMES = "corral-runtime,runc,crun"
PROFILES = ("default", "cri")
# crun 1.8 rejects any ociVersion that is not 1.0.x; every runtime gets the same config.
BENCH_OCI_VERSION = "1.0.2"


class StepFailed(Exception):
    """A runtime step failed; the message says which and why (its stderr)."""


# ---------------------------------------------------------------- one runtime, in process


class Lifecycle:
    """Runs detached lifecycles of one runtime binary from the current process."""

    # The methods a worker (WorkerProxy) may call on it.
    WORKER_OPS: tuple[str, ...] = ("cycle",)

    def __init__(self, binary: str, root: str, bundle: str, scratch: str) -> None:
        self.binary = binary
        self.root = root
        self.bundle = bundle
        self.scratch = scratch
        self.live: str | None = None  # a container that may need delete --force
        os.makedirs(root, exist_ok=True)
        os.makedirs(scratch, exist_ok=True)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        # The runtime's stderr (and the container's) go to a file, never a pipe: a
        # detached init inherits it, and a pipe would keep `create` from finishing.
        self.log = os.open(os.path.join(scratch, "stderr.log"),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def cycle(self, cid: str) -> dict[str, float]:
        """One create/start/wait/delete; returns seconds per step and in total."""
        pid_file = os.path.join(self.scratch, cid + ".pid")
        times: dict[str, float] = {}
        began = time.perf_counter()
        self.live = cid
        times["create"] = self._run("create", "--bundle", self.bundle, "--pid-file", pid_file, cid)
        exited = open_exit_watch(read_pid(pid_file))
        try:
            times["start"] = self._run("start", cid)
            started = time.perf_counter()
            exited.wait(STEP_TIMEOUT)
            times["wait"] = time.perf_counter() - started
        finally:
            exited.close()
        times["delete"] = self._run("delete", cid)
        times["total"] = time.perf_counter() - began
        self.live = None
        os.unlink(pid_file)
        reap_orphans()
        return times

    def cleanup(self) -> None:
        """Force-delete a container left behind by a failed or interrupted cycle."""
        if self.live is not None:
            subprocess.run([self.binary, "--root", self.root, "delete", "--force", self.live],
                           stdin=self.devnull, stdout=self.devnull, stderr=self.devnull,
                           timeout=STEP_TIMEOUT, check=False)
            self.live = None
        reap_orphans()

    def _run(self, *args: str) -> float:
        command = [self.binary, "--root", self.root, *args]
        log_start = os.lseek(self.log, 0, os.SEEK_END)
        began = time.perf_counter()
        proc = subprocess.Popen(command, stdin=self.devnull, stdout=self.devnull,
                                stderr=self.log)
        # Not Popen.wait(timeout): it polls with growing sleeps (0.5, 1, 2 … 50 ms),
        # which rounds each step up by as much as it took.  A pidfd wakes us at exit.
        pidfd = os.pidfd_open(proc.pid)
        try:
            if not select.select([pidfd], [], [], STEP_TIMEOUT)[0]:
                proc.kill()
                proc.wait()
                raise StepFailed(f"{args[0]}: no answer in {STEP_TIMEOUT:.0f}s")
            rc = proc.wait()
        finally:
            os.close(pidfd)
        elapsed = time.perf_counter() - began
        if rc != 0:
            raise StepFailed(f"{args[0]} exited {rc}: {self._log_since(log_start)}")
        return elapsed

    def _log_since(self, offset: int) -> str:
        with open(os.path.join(self.scratch, "stderr.log"), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace").strip()
        lines = text.splitlines()
        return " | ".join(lines[-3:]) if lines else "(no stderr)"


class ExitWatch:
    """Waits for a process that may not be our child to exit (pidfd: no polling)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if not ready:
            raise StepFailed(f"wait: init {self.pid} still running after {timeout:.0f}s")

    def close(self) -> None:
        os.close(self.pidfd)


def open_exit_watch(pid: int) -> ExitWatch:
    # Opened before `start` so the pid cannot be reused under us.
    try:
        return ExitWatch(pid)
    except ProcessLookupError:
        raise StepFailed(f"create: init {pid} is gone before start") from None


def read_pid(pid_file: str) -> int:
    try:
        with open(pid_file, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        raise StepFailed(f"create: no usable --pid-file ({e})") from None


def become_subreaper() -> None:
    """Detached inits are re-parented to us (as to a shim), so we reap them, not pid 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    """Collect exited inits and runtime helpers; only called with no step in flight."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ---------------------------------------------------------------- crun: a worker in a mount ns


class WorkerProxy:
    """A runner (Lifecycle or a subclass) served by a worker inside a private mount namespace.

    The worker is `SCRIPT --worker SETUP` under `unshare --mount`: SCRIPT's main
    hands SETUP to worker_main() with its runner class; `call(op, *args)` runs
    `runner.op(*args)` there and returns the result.
    """

    def __init__(self, script: str, binary: str, root: str, bundle: str, scratch: str,
                 empty: str) -> None:
        setup = {"binary": binary, "root": root, "bundle": bundle, "scratch": scratch,
                 "empty": empty}
        command = ["unshare", "--mount", "--propagation", "private",
                   sys.executable, os.path.abspath(script), "--worker", json.dumps(setup)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.call("ready")

    def call(self, op: str, *args: Any) -> Any:
        return self._ask({"op": op, "args": list(args)})["result"]

    def cleanup(self) -> None:
        """Closing stdin tells the worker to clean up and exit."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=STEP_TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
        except BrokenPipeError:
            raise StepFailed("worker is gone") from None
        line = self.proc.stdout.readline()
        if not line:
            raise StepFailed(f"worker exited ({self.proc.wait()}) without answering")
        reply = json.loads(line)
        if not reply["ok"]:
            raise StepFailed(reply["error"])
        return reply


class WorkerLifecycle(WorkerProxy):
    """The same interface as Lifecycle, served by a worker."""

    def cycle(self, cid: str) -> dict[str, float]:
        return self.call("cycle", cid)


def worker_main(setup_json: str, runner_class: type[Lifecycle] = Lifecycle) -> int:
    """Worker mode: hide the cgroup2 controllers, then serve runner calls over stdin/stdout."""
    setup = json.loads(setup_json)
    reply = sys.stdout
    try:
        hide_unified_controllers(setup["empty"])
        runner = runner_class(setup["binary"], setup["root"], setup["bundle"], setup["scratch"])
        become_subreaper()
    except (OSError, subprocess.CalledProcessError) as e:
        _answer(reply, {"ok": False, "error": f"worker setup: {e}"})
        return 1
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request["op"]
            try:
                if op == "ready":
                    result = None
                elif op in runner_class.WORKER_OPS:
                    result = getattr(runner, op)(*request.get("args", []))
                else:
                    raise StepFailed(f"worker: unknown op {op!r}")
                _answer(reply, {"ok": True, "result": result})
            except StepFailed as e:
                _answer(reply, {"ok": False, "error": str(e)})
    except KeyboardInterrupt:
        pass
    finally:
        runner.cleanup()
    return 0


def _answer(stream: Any, reply: dict[str, Any]) -> None:
    stream.write(json.dumps(reply) + "\n")
    stream.flush()


def hide_unified_controllers(empty: str) -> None:
    """Bind an empty file over the cgroup2 controllers, in our own mount namespace only."""
    parent_ns = os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    if os.readlink("/proc/self/ns/mnt") == parent_ns:
        raise OSError("refusing to bind-mount: not in a private mount namespace")
    subprocess.run(["mount", "--bind", empty, UNIFIED_CONTROLLERS], check=True)


def needs_hidden_controllers(binary: str) -> bool:
    """crun on a hybrid host whose cgroup2 hierarchy has controllers enabled."""
    if os.path.basename(binary) != "crun":
        return False
    try:
        with open(UNIFIED_CONTROLLERS, encoding="ascii") as f:
            return bool(f.read().strip())
    except OSError:
        return False


# ---------------------------------------------------------------- the benchmark


class Contender:
    """One runtime's results: samples per step, or the error that stopped it."""

    def __init__(self, name: str, binary: str | None,
                 steps: tuple[str, ...] = (*STEPS, "total")) -> None:
        self.name = name
        self.binary = binary
        self.runner: Any = None  # a Lifecycle (or subclass), or a WorkerProxy serving one
        self.samples: dict[str, list[float]] = {step: [] for step in steps}
        self.error: str | None = None
        self.version = runtime_version(binary) if binary else ""

    def fail(self, error: str) -> None:
        self.error = error
        self.stop()

    def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            runner.cleanup()


def resolve_binary(name: str) -> str | None:
    """A path, or a name looked up in the venv's bin (corral-runtime) and then $PATH."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    venv_bin = os.path.dirname(sys.executable)
    return shutil.which(name, path=venv_bin + os.pathsep + os.environ.get("PATH", ""))


def runtime_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=STEP_TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0].strip() if out else ""


def build_bench_bundle(workdir: str, profile: str = "default",
                       args: list[str] | None = None) -> str:
    """The one bundle every runtime runs: busybox, `args` (default /bin/true), `profile`."""
    from corral.images.busybox import build_bundle

    def edit(config: dict[str, Any]) -> None:
        config["ociVersion"] = BENCH_OCI_VERSION
        if profile == "cri":
            apply_cri_profile(config)

    bundle = os.path.join(workdir, "bundle")
    build_bundle(bundle, args or ["/bin/true"], terminal=False, edit=edit)
    return bundle


def start_runner(contender: Contender, workdir: str, bundle: str,
                 runner_class: type[Lifecycle] = Lifecycle,
                 worker_class: type[WorkerProxy] = WorkerLifecycle,
                 script: str = __file__) -> None:
    """In process, or (crun on this host) a worker_class running `script --worker`."""
    if contender.binary is None:
        contender.error = "not found"
        return
    root = os.path.join(workdir, "roots", contender.name)
    scratch = os.path.join(workdir, "scratch", contender.name)
    try:
        if needs_hidden_controllers(contender.binary):
            empty = os.path.join(workdir, "empty")
            open(empty, "w").close()
            contender.runner = worker_class(script, contender.binary, root, bundle, scratch,
                                            empty)
        else:
            contender.runner = runner_class(contender.binary, root, bundle, scratch)
    except (OSError, StepFailed) as e:
        contender.error = f"setup: {e}"


def run_iterations(contenders: list[Contender], iterations: int, warmup: int,
                   run: Callable[[Contender, int, bool], None] | None = None) -> None:
    """`run(contender, index, record)` for each, in turns whose first runtime rotates."""
    run = run or run_one
    for index in range(warmup + iterations):
        active = [c for c in contenders if c.runner is not None]
        if not active:
            return
        shift = index % len(active)
        for contender in active[shift:] + active[:shift]:
            run(contender, index, index >= warmup)


def run_one(contender: Contender, index: int, record: bool) -> None:
    assert contender.runner is not None
    cid = f"corral-bench-{os.getpid()}-{contender.name}-{index}"
    try:
        times = contender.runner.cycle(cid)
    except StepFailed as e:
        contender.fail(str(e))
        return
    if record:
        for step, seconds in times.items():
            contender.samples[step].append(seconds)


# ---------------------------------------------------------------- reporting


def runc_median(contenders: list[Contender], step: str) -> float | None:
    """The baseline of the `vs runc` column."""
    baseline = next((c for c in contenders if c.name == "runc" and c.samples[step]), None)
    return statistics.median(baseline.samples[step]) if baseline else None


def summarize(contenders: list[Contender], iterations: int,
              profile: str = "default") -> dict[str, Any]:
    runc = runc_median(contenders, "total")
    report: dict[str, Any] = {"iterations": iterations, "profile": profile,
                              "kernel": platform.release(), "runtimes": {}}
    for c in contenders:
        entry: dict[str, Any] = {"binary": c.binary, "version": c.version, "error": c.error,
                                 "cycles": len(c.samples["total"])}
        totals = c.samples["total"]
        if totals:
            median = statistics.median(totals)
            entry["cycle_ms"] = {"median": ms(median), "min": ms(min(totals)),
                                 "max": ms(max(totals))}
            entry["vs_runc"] = round(median / runc, 3) if runc else None
            entry["step_median_ms"] = {step: ms(statistics.median(c.samples[step]))
                                       for step in STEPS}
        report["runtimes"][c.name] = entry
    return report


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def format_table(report: dict[str, Any]) -> str:
    header = (f"{'runtime':<16}{'cycles':>7}{'median':>9}{'min':>9}{'max':>9}{'vs runc':>9}"
              f"  |{'create':>8}{'start':>8}{'wait':>8}{'delete':>8}")
    lines = [f"detached lifecycle, /bin/true in busybox, profile {report['profile']}, "
             f"{report['iterations']} iterations, kernel {report['kernel']} "
             "(ms; per-step columns are medians)", header, "-" * len(header)]
    for name, entry in report["runtimes"].items():
        lines.append(format_row(name, entry))
    lines.extend(format_versions(report))
    return "\n".join(lines)


def format_versions(report: dict[str, Any]) -> list[str]:
    return [f"  {name}: {entry['binary']} ({entry['version']})"
            for name, entry in report["runtimes"].items() if entry["version"]]


def format_row(name: str, entry: dict[str, Any]) -> str:
    row = f"{name:<16}{entry['cycles']:>7}"
    if "cycle_ms" in entry:
        cycle, steps = entry["cycle_ms"], entry["step_median_ms"]
        ratio = f"{entry['vs_runc']:.2f}x" if entry["vs_runc"] else "-"
        row += (f"{cycle['median']:>9.1f}{cycle['min']:>9.1f}{cycle['max']:>9.1f}{ratio:>9}"
                f"  |" + "".join(f"{steps[s]:>8.1f}" for s in STEPS))
    if entry["error"]:
        row += f"  FAILED: {entry['error']}"
    return row


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Detached container lifecycle benchmark.")
    parser.add_argument("-n", "--iterations", type=int, default=20,
                        help="measured cycles per runtime (default 20)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unrecorded cycles per runtime first (default 1)")
    add_common_args(parser)
    return parser.parse_args(argv)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--runtimes, --profile, --json and the hidden --worker, shared with bench/exec.py."""
    parser.add_argument("--runtimes", default=DEFAULT_RUNTIMES,
                        help=f"comma-separated names or paths (default {DEFAULT_RUNTIMES})")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: runc spec's bundle; cri: containerd's default "
                             "capabilities and seccomp profile (default: default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker is not None:
        return worker_main(opts.worker)
    if os.geteuid() != 0:
        print("lifecycle.py: needs root (rootful containers)", file=sys.stderr)
        return 2
    become_subreaper()
    names = [n.strip() for n in opts.runtimes.split(",") if n.strip()]
    workdir = tempfile.mkdtemp(prefix="corral-bench-")
    contenders = [Contender(os.path.basename(n), resolve_binary(n)) for n in names]

    def prepare() -> None:
        bundle = build_bench_bundle(workdir, opts.profile)
        for contender in contenders:
            start_runner(contender, workdir, bundle)

    return run_bench("lifecycle.py", opts, contenders, workdir, prepare)


def run_bench(prog: str, opts, contenders: list[Contender], workdir: str,
              prepare: Callable[[], None],
              run: Callable[[Contender, int, bool], None] | None = None,
              summarize_with=None, format_with=None) -> int:
    """Prepare, run the iterations, clean up whatever happens, print the report
    (this bench's summary and table unless others are given)."""
    try:
        prepare()
        run_iterations(contenders, opts.iterations, opts.warmup, run)
    except ProfileError as e:
        print(f"{prog}: --profile {opts.profile}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for contender in contenders:
            contender.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = (summarize_with or summarize)(contenders, opts.iterations, opts.profile)
    print(json.dumps(report, indent=2) if opts.json else (format_with or format_table)(report))
    return 0 if all(c.error is None for c in contenders) else 1


if __name__ == "__main__":
    sys.exit(main())
