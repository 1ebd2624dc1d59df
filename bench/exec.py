"""Exec latency, side by side across runc-compatible runtimes.

What a high-level runtime pays for a CRI ExecSync or a `kubectl exec` (a probe,
say): a fresh exec of the runtime binary that joins a running container, runs a
process there and waits for it:

    RT --root R create --bundle B --pid-file P ID  +  RT --root R start ID   (once: sleep 1000)
    RT --root R exec ID /bin/true                                           (K times, timed)

Each exec is timed as a whole process, from spawn to exit, on a pidfd.  Runtimes
take turns (the starting one rotates), and crun runs in the same private-mount-
namespace worker as in bench/lifecycle.py, whose code this reuses.  The long-
running containers are `delete --force`d at the end, also on failure and Ctrl-C.

    .venv/bin/python bench/exec.py [-n K] [--runtimes corral-runtime,runc,crun]
                                   [--profile default|cri] [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from typing import Any

from lifecycle import (
    Contender,
    Lifecycle,
    StepFailed,
    WorkerProxy,
    add_common_args,
    become_subreaper,
    build_bench_bundle,
    format_versions,
    ms,
    reap_orphans,
    resolve_binary,
    run_bench,
    runc_median,
    start_runner,
    worker_main,
)

CONTAINER_ARGS = ["/bin/sleep", "1000"]
EXEC_ARGS = ["/bin/true"]


class ExecSession(Lifecycle):
    """One long-running container of one runtime, and timed execs into it."""

    WORKER_OPS = ("run_container", "exec_once")

    def run_container(self, cid: str) -> None:
        """create + start, detached; the container stays `live` until cleanup()."""
        pid_file = os.path.join(self.scratch, cid + ".pid")
        self.live = cid
        self._run("create", "--bundle", self.bundle, "--pid-file", pid_file, cid)
        self._run("start", cid)

    def exec_once(self, cid: str) -> float:
        """Seconds from spawning `RT exec ID /bin/true` until it has exited (status 0)."""
        elapsed = self._run("exec", cid, *EXEC_ARGS)
        reap_orphans()
        return elapsed


class WorkerExec(WorkerProxy):
    """The same interface as ExecSession, served by a worker (crun)."""

    def run_container(self, cid: str) -> None:
        self.call("run_container", cid)

    def exec_once(self, cid: str) -> float:
        return self.call("exec_once", cid)


def container_id(contender: Contender) -> str:
    return f"corral-exec-{os.getpid()}-{contender.name}"


def start_container(contender: Contender) -> None:
    if contender.runner is None:
        return
    try:
        contender.runner.run_container(container_id(contender))
    except StepFailed as e:
        contender.fail(f"container: {e}")


def run_exec(contender: Contender, index: int, record: bool) -> None:
    assert contender.runner is not None
    try:
        seconds = contender.runner.exec_once(container_id(contender))
    except StepFailed as e:
        contender.fail(str(e))
        return
    if record:
        contender.samples["exec"].append(seconds)


# ---------------------------------------------------------------- reporting


def summarize(contenders: list[Contender], iterations: int, profile: str) -> dict[str, Any]:
    runc = runc_median(contenders, "exec")
    report: dict[str, Any] = {"iterations": iterations, "profile": profile,
                              "kernel": platform.release(), "runtimes": {}}
    for c in contenders:
        samples = c.samples["exec"]
        entry: dict[str, Any] = {"binary": c.binary, "version": c.version, "error": c.error,
                                 "execs": len(samples)}
        if samples:
            median = statistics.median(samples)
            entry["exec_ms"] = {"median": ms(median), "min": ms(min(samples)),
                                "max": ms(max(samples))}
            entry["vs_runc"] = round(median / runc, 3) if runc else None
        report["runtimes"][c.name] = entry
    return report


def format_table(report: dict[str, Any]) -> str:
    header = f"{'runtime':<16}{'execs':>7}{'median':>9}{'min':>9}{'max':>9}{'vs runc':>9}"
    lines = [f"exec latency, `exec ID /bin/true` into a running busybox container, "
             f"profile {report['profile']}, {report['iterations']} execs, "
             f"kernel {report['kernel']} (ms)", header, "-" * len(header)]
    for name, entry in report["runtimes"].items():
        row = f"{name:<16}{entry['execs']:>7}"
        if "exec_ms" in entry:
            t = entry["exec_ms"]
            ratio = f"{entry['vs_runc']:.2f}x" if entry["vs_runc"] else "-"
            row += f"{t['median']:>9.1f}{t['min']:>9.1f}{t['max']:>9.1f}{ratio:>9}"
        if entry["error"]:
            row += f"  FAILED: {entry['error']}"
        lines.append(row)
    lines.extend(format_versions(report))
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Exec latency benchmark.")
    parser.add_argument("-n", "--iterations", type=int, default=30,
                        help="measured execs per runtime (default 30)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unrecorded execs per runtime first (default 1)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker is not None:
        return worker_main(opts.worker, ExecSession)
    if os.geteuid() != 0:
        print("exec.py: needs root (rootful containers)", file=sys.stderr)
        return 2
    become_subreaper()
    names = [n.strip() for n in opts.runtimes.split(",") if n.strip()]
    workdir = tempfile.mkdtemp(prefix="corral-bench-")
    contenders = [Contender(os.path.basename(n), resolve_binary(n), steps=("exec",))
                  for n in names]

    def prepare() -> None:
        bundle = build_bench_bundle(workdir, opts.profile, CONTAINER_ARGS)
        for contender in contenders:
            start_runner(contender, workdir, bundle, ExecSession, WorkerExec, __file__)
            start_container(contender)

    return run_bench("exec.py", opts, contenders, workdir, prepare, run_exec,
                     summarize_with=summarize, format_with=format_table)

if __name__ == "__main__":
    sys.exit(main())
