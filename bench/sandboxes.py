"""Strong sandboxes side by side: corrald's native, runsc and vm handlers, containerd + runc.

`vm` restores each pod's VM from a template (the default); `vm-cold`, a handler the
bench adds to corrald's config (`templates = false`), boots each one; `vm-pool`, another
(`pool = N`, --pool), takes each pod's VM from a warm pool (sandbox/pool.py: restored
and run once before the pod asks).  Each of its pods starts with the pool full, and
nothing else is measured until the pool has refilled (its refill is CPU work that
would slow whatever runs beside it); its memory is the pods', the idle pool apart.

1. Pod ready: RunPodSandbox (with the CRI `runtime_handler`) → CreateContainer
   (busybox `sleep 3600`) → StartContainer → ContainerStatus polled every 2 ms
   until RUNNING.  Median, min and max over N pods per handler (-n, --vm-n),
   each pod removed before the next; one unrecorded warm-up pod per handler;
   handlers take turns, the first one rotating each round.
2. Host PSS per idle pod: K pods (--pods, --vm-pods; a list such as 1,5,10 measures
   each count in turn) running `sleep 3600`,
   ContainerStatus RUNNING for each, --settle seconds of rest, then the PSS
   (/proc/PID/smaps_rollup) of every process in the process trees of those
   pods' shims (corrald's shims with runsc's sandbox, gofers, ptrace stubs and
   `runsc wait`s, or QEMU; containerd's runc shims and pause processes), less
   the containers' own `sleep 3600` where they are host processes, over K.
   The daemon's own process tree (corrald and its shim zygote; containerd) is
   reported separately, and so is the share of QEMU's TCG translation cache
   (emulation only: a KVM host has none).
3. Burst (--burst, for --burst-handlers): that many pods asked for at once, a client
   thread each; the time until the last one is RUNNING.

corrald and containerd 1.6 are bench/cri.py's: their own temp roots, state,
sockets and cgroup parents, the busybox image imported offline, and their own
CNI bridges here (`corralb4` 10.99.54.0/24, `corralb5` 10.99.55.0/24).  A
handler that corrald's Status does not offer is skipped with its reason; one
that fails is reported with its error and the others go on.  Everything is
removed at the end (also on Ctrl-C or SIGTERM): cri.py's cleanup, then any
process still carrying a daemon's temp dir in its command line (QEMU, runsc)
and the VM agent sockets they named.

    .venv/bin/python bench/sandboxes.py [-n 10] [--vm-n 5] [--pods 5] [--vm-pods 1,5,10]
                                        [--handlers native,runsc,vm,vm-cold,vm-pool]
                                        [--pool 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import time

import cri  # a sibling: bench/ is sys.path[0]; it puts src/ and the repo on sys.path
import grpc
from cri import (
    PAYLOAD_ARGS,
    RPC_TIMEOUT,
    BenchCorrald,
    BenchError,
    Containerd,
    lap,
    percentile,
    process_table,
    pss_kib,
    run_pod,
    start_side_by_side,
    stop_daemons,
    tool_version,
    with_descendants,
)
from cri_api.v1 import api_pb2
from tests.integration.corrald import kill_pids, short_base  # the test harness, as cri.py

HANDLERS = ("native", "runsc", "vm", "vm-cold", "vm-pool")  # template, boot, warm pool
REFERENCE = "containerd+runc"
STEPS = ("run_pod", "create", "start", "running")
POLL = 0.002
# The issues' goals on this machine (TCG): a cold VM per pod, a VM from a template (its PSS
# goal is at 10 pods: --vm-pods 10), runsc.
GOALS = {"vm-cold": {"ready_ms": 3500, "pss_mb": 240},
         "vm": {"ready_ms": 250, "pss_mb": 40, "burst_ms": 2000},
         "vm-pool": {"ready_ms": 250, "pss_mb": 40, "burst_ms": 2000},
         "runsc": {"ready_ms": 250}}
COLD_VM = '[runtimes.vm-cold]\ntype = "vm"\ntemplates = false\n'  # corrald's config, added
POOLED_VM = '[runtimes.vm-pool]\ntype = "vm"\npool = {size}\n'
POOL_FILL_TIMEOUT = 900.0
RUNSC_SHIM = "containerd-shim-runsc-v1"
VM_SOCKET = re.compile(r"path=(/run/corral-vm/[0-9a-f]+\.sock)")


class Subject:
    """One row of the table: a daemon and the runtime handler its pods ask for."""

    def __init__(self, name: str, daemon, handler: str, iterations: int,
                 pods: tuple[int, ...]):
        self.name = name
        self.daemon = daemon
        self.handler = handler
        self.iterations = iterations
        self.pod_counts = tuple(k for k in pods if k > 0)  # memory measured at each
        self.pods = self.pod_counts[-1] if self.pod_counts else 0  # the table's row
        self.ready: list[dict[str, float]] = []
        self.memory: dict | None = None
        self.memory_curve: list[dict] = []  # one memory() per pod count, in order
        self.burst: dict | None = None
        self.error = ""
        self.log_tail = ""
        self.skipped = ""

    @property
    def alive(self) -> bool:
        return not self.error and not self.skipped

    def pool(self) -> dict | None:
        """This handler's warm pool as Status reports it ({"size", "ready"}), if any."""
        if isinstance(self.daemon, Containerd):
            return None
        return offered_handlers(self.daemon)[1].get(self.handler, {}).get("pool")

    def settle(self) -> None:
        """Wait until this handler's warm pool (if it has one) is full again."""
        deadline = time.monotonic() + POOL_FILL_TIMEOUT
        while (pool := self.pool()) and pool["ready"] < pool["size"]:
            if time.monotonic() > deadline:
                raise BenchError(f"the {self.handler} pool is at {pool['ready']} of "
                                 f"{pool['size']} after {POOL_FILL_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def fail(self, phase: str, error: Exception, clean: bool = True) -> None:
        message = error.details() if isinstance(error, grpc.RpcError) else str(error)
        self.error = f"{phase}: {message}"
        self.log_tail = self.daemon.log_tail()
        if clean:
            try:
                self.daemon.remove_all_pods()  # a pod that failed half-way is still there
            except grpc.RpcError:
                pass


# ---------------------------------------------------------------- measurements


def pod_ready(subject: Subject, name: str) -> tuple[str, dict[str, float]]:
    """One pod up to RUNNING: (pod ID, ms per step and `ready`, their sum)."""
    rt = subject.daemon.runtime
    pod_id, container_id, times = run_pod(subject.daemon, name, PAYLOAD_ARGS,
                                          runtime_handler=subject.handler)
    mark = time.perf_counter()
    deadline = time.monotonic() + RPC_TIMEOUT
    while True:
        state = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id),
                                   timeout=RPC_TIMEOUT).status.state
        if state == api_pb2.CONTAINER_RUNNING:
            break
        if state == api_pb2.CONTAINER_EXITED or time.monotonic() > deadline:
            raise BenchError(f"container {container_id[:12]} is "
                             f"{api_pb2.ContainerState.Name(state)}, not RUNNING")
        time.sleep(POLL)
    times["running"], _ = lap(mark)
    times["ready"] = sum(times[s] for s in STEPS)
    return pod_id, times


def remove_pod(subject: Subject, pod_id: str) -> float:
    """StopPodSandbox + RemovePodSandbox, in ms (kept in the JSON only)."""
    rt = subject.daemon.runtime
    mark = time.perf_counter()
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT)
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                        timeout=RPC_TIMEOUT)
    return lap(mark)[0]


def burst(subject: Subject, n: int) -> dict:
    """`n` pods asked for at once (a thread each): ms until the last is RUNNING, and the
    median of each one's own pod ready; they are removed afterwards."""
    import threading

    subject.settle()
    go = threading.Event()
    results: list = [None] * n
    errors: list[Exception] = []

    def one(i: int) -> None:
        go.wait()
        try:
            results[i] = pod_ready(subject, f"burst{i}")
        except (BenchError, grpc.RpcError) as e:
            errors.append(e)
        finally:
            done[i] = time.perf_counter()

    done = [0.0] * n
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    try:
        if errors:
            raise errors[0]
        return {"pods": n, "all_ready_ms": round((max(done) - began) * 1000, 1),
                "ready_median_ms": round(statistics.median(r[1]["ready"] for r in results), 1)}
    finally:
        for result in results:
            if result:
                remove_pod(subject, result[0])
        subject.settle()


def pod_life(subject: Subject, name: str) -> dict[str, float]:
    subject.settle()
    pod_id, times = pod_ready(subject, name)
    times["remove"] = remove_pod(subject, pod_id)
    subject.settle()
    return times


def shims_of(daemon, table: dict[int, tuple[int, str]]) -> set[int]:
    if isinstance(daemon, Containerd):
        return daemon.shim_pids(table)
    return set(daemon.shim_pids(pooled=False))


def accounting(daemon) -> dict[str, set[int]]:
    """The daemon's processes, its pods' (shim trees, payloads aside), the payloads, and
    strays: processes naming the daemon's temp dir that are in neither tree."""
    table = process_table()
    own = with_descendants({daemon.process.pid}, table)
    shims = shims_of(daemon, table)
    pods = with_descendants(shims, table) - own
    payloads = {pid for pid in pods if table[pid][1].split() == PAYLOAD_ARGS}
    pool = with_descendants(set(daemon.pool_shim_pids()), table) - own \
        if isinstance(daemon, BenchCorrald) else set()
    base = str(daemon.base)
    strays = {pid for pid, (_, cmdline) in table.items() if base in cmdline} \
        - own - pods - pool - {os.getpid()}
    return {"daemon": own, "shims": shims, "pods": pods - payloads, "payloads": payloads,
            "pool": pool, "strays": strays}


def tcg_code_kib(pid: int) -> int:
    """The PSS of a QEMU's TCG translation cache (its one anonymous rwx mapping): what a
    pod VM costs under emulation that it would not under KVM."""
    total, in_cache = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and not fields[0].endswith(":"):
                    in_cache = len(fields) == 5 and fields[1] == "rwxp"
                elif in_cache and fields[0] == "Pss:":
                    total += int(fields[1])
    except OSError:
        pass
    return total


def memory(subject: Subject, settle: float, k: int) -> dict:
    """PSS with `k` idle pods; they are removed afterwards."""
    daemon = subject.daemon
    try:
        subject.settle()
        pods = [pod_ready(subject, f"mem{i}")[0] for i in range(k)]
        subject.settle()
        time.sleep(settle)  # start-up garbage freed, a VM's freed pages reported back
        found = accounting(daemon)
        if len(found["shims"]) != k:
            raise BenchError(f"{len(found['shims'])} shims for {k} pods: the accounting "
                             "is wrong")
        if subject.handler in ("", "native") and len(found["payloads"]) != k:
            raise BenchError(f"{len(found['payloads'])} `sleep 3600` processes under the "
                             f"shims, not {k}: the accounting is wrong")
        by_process: dict[str, float] = {}
        tcg_kib = 0.0
        table = process_table()
        for pid in found["pods"]:
            name = process_name(pid, table)
            by_process[name] = by_process.get(name, 0) + pss_kib(pid) / k
            if name.startswith("qemu-system"):
                tcg_kib += tcg_code_kib(pid) / k
        per_pod_kib = sum(by_process.values())
        daemon_kib = sum(pss_kib(pid) for pid in found["daemon"])
        strays_kib = sum(pss_kib(pid) for pid in found["strays"])
        own_pool = subject.pool()  # another handler's pool is not this subject's
        pool_kib = sum(pss_kib(pid) for pid in found["pool"]) if own_pool else 0.0
        for pod_id in pods:
            remove_pod(subject, pod_id)
    finally:
        daemon.remove_all_pods()
    return {"pods": k, "per_pod_kib": per_pod_kib, "daemon_kib": daemon_kib,
            "pool_kib": pool_kib, "pool_size": (own_pool or {}).get("size", 0),
            "tcg_code_kib": tcg_kib,
            "processes_per_pod": len(found["pods"]) / k,
            "per_pod_by_process_kib": dict(sorted(by_process.items(), key=lambda kv: -kv[1])),
            "payloads_excluded": len(found["payloads"]),
            "strays": len(found["strays"]), "strays_kib": strays_kib}


def process_name(pid: int, table: dict[int, tuple[int, str]]) -> str:
    """argv[0]'s base name (corral.shim, qemu-system-x86_64, runsc-sandbox, runsc-gofer,
    runsc for `runsc wait`, containerd-shim-runc-v2, sleep for pause); a process with no
    command line (runsc's ptrace stubs) is its comm in brackets."""
    words = table.get(pid, (0, ""))[1].split()
    if words:
        return os.path.basename(words[0])
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f"[{f.read().strip()}]"
    except OSError:
        return "?"


# ---------------------------------------------------------------- the run


def subjects_for(corrald: BenchCorrald, containerd: Containerd, opts) -> list[Subject]:
    subjects = []
    for handler in opts.handlers:
        vm = handler.startswith("vm")
        subjects.append(Subject(handler, corrald, handler,
                                opts.vm_iterations if vm else opts.iterations,
                                opts.vm_pods if vm else opts.pods))
    subjects.append(Subject(REFERENCE, containerd, "", opts.iterations, opts.pods))
    return subjects


def offered_handlers(corrald: BenchCorrald) -> tuple[set[str], dict[str, dict]]:
    """(the handlers Status offers, each configured handler's verbose info)."""
    reply = corrald.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=RPC_TIMEOUT)
    info = {h["name"]: h for h in json.loads(reply.info.get("runtimeHandlers", "[]"))}
    return {h.name for h in reply.runtime_handlers}, info


def measure(subjects: list[Subject], opts) -> None:
    for subject in subjects:  # warm-up: the first pod of each pays for unpacking and caches
        if subject.alive:
            try:
                pod_life(subject, f"warm-{subject.name}")
            except (BenchError, grpc.RpcError) as e:
                subject.fail("warm-up", e)
    rounds = max((s.iterations for s in subjects), default=0)
    for i in range(rounds):
        turn = [s for s in subjects if s.alive and i < s.iterations]
        if turn:
            turn = turn[i % len(turn):] + turn[:i % len(turn)]
        for subject in turn:
            try:
                subject.ready.append(pod_life(subject, f"p{i}"))
            except (BenchError, grpc.RpcError) as e:
                subject.fail(f"pod ready (pod {i + 1})", e)
    for subject in subjects:
        for k in subject.pod_counts:
            if not subject.alive:
                break
            try:
                subject.memory_curve.append(memory(subject, opts.settle, k))
            except (BenchError, grpc.RpcError) as e:
                subject.fail(f"memory at {k} pods", e)
        if subject.memory_curve and subject.alive:
            subject.memory = subject.memory_curve[-1]
    for subject in subjects:
        if subject.alive and opts.burst and subject.name in opts.burst_handlers:
            try:
                subject.burst = burst(subject, opts.burst)
            except (BenchError, grpc.RpcError) as e:
                subject.fail(f"burst of {opts.burst}", e)


def sweep(daemons) -> tuple[dict[int, str], set[str]]:
    """Processes that carry a daemon's temp dir in their command line, and the VM agent
    sockets they name: what must be gone once the daemons are stopped."""
    bases = [str(d.base) for d in daemons]
    processes = {pid: cmdline for pid, (_, cmdline) in process_table().items()
                 if pid != os.getpid() and any(b in cmdline for b in bases)}
    sockets = {m for cmdline in processes.values() for m in VM_SOCKET.findall(cmdline)}
    return processes, sockets


def finish_sweep(processes: dict[int, str], sockets: set[str]) -> tuple[list[str], list[str]]:
    """Kill what of `processes` outlived the daemons' cleanup (same PID, same command
    line), remove the sockets: (what the sweep removed, what is still there)."""
    def survivors() -> set[int]:
        table = process_table()
        return {pid for pid, cmdline in processes.items()
                if pid in table and table[pid][1] == cmdline}

    found = survivors()
    kill_pids(found)
    deadline = time.monotonic() + 5
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = survivors()
    removed = [f"process {pid} ({processes[pid][:60]})" for pid in sorted(found - left)]
    for path in sockets:
        try:
            os.unlink(path)
            removed.append(f"socket {path}")
        except FileNotFoundError:
            pass
    return removed, [f"process {pid} ({processes[pid][:60]})" for pid in sorted(left)]


# ---------------------------------------------------------------- reporting


def summarize(subjects: list[Subject], versions: dict[str, str], notes: list[str],
              opts, load: tuple[str, str]) -> dict:
    report = {"command": " ".join([".venv/bin/python", "bench/sandboxes.py", *sys.argv[1:]]),
              "load_average": {"start": load[0], "end": load[1]},
              "settle_s": opts.settle, "notes": notes, "versions": versions, "subjects": {}}
    for subject in subjects:
        entry: dict = {"daemon": subject.daemon.name, "runtime_handler": subject.handler,
                       "pods_measured": len(subject.ready), "iterations": subject.iterations,
                       "memory_pods": subject.pods, "error": subject.error or None,
                       "skipped": subject.skipped or None}
        if subject.error:
            entry["daemon_log_tail"] = subject.log_tail
        if subject.ready:
            ready = sorted(t["ready"] for t in subject.ready)
            entry["ready_ms"] = {"median": round(statistics.median(ready), 1),
                                 "p90": round(percentile(ready, 0.9), 1),
                                 "min": round(ready[0], 1), "max": round(ready[-1], 1)}
            entry["step_median_ms"] = {s: round(statistics.median(t[s] for t in subject.ready), 1)
                                       for s in (*STEPS, "remove")}
        if subject.burst:
            entry["burst"] = subject.burst
        if subject.memory:
            entry["memory"] = {k: round(v, 1) if isinstance(v, float) else v
                               for k, v in subject.memory.items()}
            entry["memory"]["per_pod_by_process_kib"] = {
                k: round(v, 1) for k, v in subject.memory["per_pod_by_process_kib"].items()}
            entry["memory_curve"] = [
                {"pods": m["pods"], "per_pod_kib": round(m["per_pod_kib"], 1),
                 "tcg_code_kib": round(m["tcg_code_kib"], 1),
                 "pool_kib": round(m["pool_kib"], 1)} for m in subject.memory_curve]
        report["subjects"][subject.name] = entry
    reference = report["subjects"].get(REFERENCE, {})
    for entry in report["subjects"].values():
        if "ready_ms" in entry and "ready_ms" in reference:
            entry["ready_vs_reference"] = round(
                entry["ready_ms"]["median"] / reference["ready_ms"]["median"], 2)
        if "memory" in entry and "memory" in reference:
            entry["pss_vs_reference"] = round(
                entry["memory"]["per_pod_kib"] / reference["memory"]["per_pod_kib"], 2)
    report["goals"] = goals(report["subjects"])
    return report


def goals(entries: dict) -> list[dict]:
    checks = []
    for name, goal in GOALS.items():
        if name not in entries:
            continue
        entry = entries[name]
        if "ready_ms" in goal:
            value = entry.get("ready_ms", {}).get("median")
            checks.append({"subject": name, "what": "pod ready median ms", "goal": goal["ready_ms"],
                           "value": value, "met": value is not None and value <= goal["ready_ms"]})
        if "pss_mb" in goal:
            kib = entry.get("memory", {}).get("per_pod_kib")
            value = round(kib * 1024 / 1e6, 1) if kib is not None else None
            checks.append({"subject": name, "what": "PSS per pod MB (10^6 bytes)",
                           "goal": goal["pss_mb"], "value": value,
                           "met": value is not None and value <= goal["pss_mb"]})
        if "burst_ms" in goal:
            found = entry.get("burst") or {}
            value = found.get("all_ready_ms")
            checks.append({"subject": name, "what": f"{found.get('pods', '?')} pods at once, "
                           "all ready ms", "goal": goal["burst_ms"], "value": value,
                           "met": value is not None and value <= goal["burst_ms"]})
    return checks


def format_table(report: dict) -> str:
    header = (f"{'handler':<17}{'pods':>5}  {'pod ready median [min-max] ms':<32}{'vs ref':>7}"
              f"{'PSS/pod MiB':>13}{'vs ref':>8}{'procs/pod':>10}{'daemon MiB':>12}")
    lines = ["pod ready: RunPodSandbox + CreateContainer + StartContainer (busybox "
             "`sleep 3600`) until ContainerStatus says RUNNING",
             f"host PSS per idle pod: the pods' shims and what they run, after "
             f"{report['settle_s']:g} s of rest; the daemon's own tree is the last column",
             header, "-" * len(header)]
    for name, entry in report["subjects"].items():
        label = name if name == REFERENCE else f"{name} (corrald)"
        row = f"{label:<17}{entry['pods_measured']:>5}  "
        if "ready_ms" in entry:
            r = entry["ready_ms"]
            spread = f"{r['median']:.1f} [{r['min']:.1f}-{r['max']:.1f}]"
            row += f"{spread:<32}"
            row += f"{ratio(entry.get('ready_vs_reference')):>7}"
        else:
            row += f"{'-':<32}{'-':>7}"
        mem = entry.get("memory")
        if mem:
            row += (f"{mem['per_pod_kib'] / 1024:>13.1f}{ratio(entry.get('pss_vs_reference')):>8}"
                    f"{mem['processes_per_pod']:>10.1f}{mem['daemon_kib'] / 1024:>12.1f}")
        lines.append(row)
        if entry["skipped"]:
            lines.append(f"    skipped: {entry['skipped']}")
        if entry["error"]:
            lines.append(f"    FAILED at {entry['error'].strip().splitlines()[0][:300]}")
        if mem and mem.get("pool_kib"):
            lines.append(f"    besides: its warm pool, {mem['pool_size']} idle VMs refilled, "
                         f"{mem['pool_kib'] / 1024:.1f} MiB PSS in all (not counted above)")
        if mem and mem["strays"]:
            lines.append(f"    warning: {mem['strays']} process(es) naming the daemon's dir "
                         f"outside its and the shims' trees ({mem['strays_kib'] / 1024:.1f} MiB, "
                         "not counted)")
    lines += ["", "step medians (ms)   " + "".join(f"{s:>10}" for s in (*STEPS, "remove"))]
    for name, entry in report["subjects"].items():
        if "step_median_ms" in entry:
            lines.append(f"{name:<20}" + "".join(f"{entry['step_median_ms'][s]:>10.1f}"
                                                 for s in (*STEPS, "remove")))
    lines += ["", "PSS per pod by process name (MiB)"]
    for name, entry in report["subjects"].items():
        if "memory" in entry:
            parts = entry["memory"]["per_pod_by_process_kib"].items()
            lines.append(f"{name:<20}" + ", ".join(f"{comm} {kib / 1024:.1f}"
                                                   for comm, kib in parts))
    curves = [(n, e["memory_curve"]) for n, e in report["subjects"].items()
              if len(e.get("memory_curve") or []) > 1 or any(
                  m["tcg_code_kib"] for m in e.get("memory_curve") or [])]
    if curves:
        lines += ["", "PSS per pod (MiB) by the number of idle pods; under TCG, of which "
                  "QEMU's translation cache (none under KVM)"]
        lines += [f"{name:<20}" + ", ".join(
            f"{m['pods']} pods {m['per_pod_kib'] / 1024:.1f}"
            + (f" (TCG cache {m['tcg_code_kib'] / 1024:.1f}, without it "
               f"{(m['per_pod_kib'] - m['tcg_code_kib']) / 1024:.1f})"
               if m["tcg_code_kib"] else "") for m in curve) for name, curve in curves]
    bursts = [(n, e["burst"]) for n, e in report["subjects"].items() if e.get("burst")]
    if bursts:
        lines += ["", "pods asked for at once (a client thread each)"]
        lines += [f"{name:<20}{b['pods']} pods: all RUNNING after {b['all_ready_ms']:.1f} ms, "
                  f"each one's pod ready median {b['ready_median_ms']:.1f} ms"
                  for name, b in bursts]
    lines.append("")
    for check in report["goals"]:
        verdict = "not measured" if check["value"] is None else \
            f"{check['value']} ({'met' if check['met'] else 'NOT met'})"
        lines.append(f"goal {check['subject']}: {check['what']} <= {check['goal']}: {verdict}")
    lines += [f"note: {note}" for note in report["notes"]]
    lines += [f"{name}: {version}" for name, version in report["versions"].items()]
    lines.append(f"load average: {report['load_average']['start']} at start, "
                 f"{report['load_average']['end']} at end")
    return "\n".join(lines)


def ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- main


def pod_counts(text: str) -> tuple[int, ...]:
    """'3' or '1,5,10': the pod counts memory is measured at, in that order."""
    try:
        counts = tuple(int(word) for word in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a pod count or a list of them: {text!r}") from None
    if any(k < 0 for k in counts):
        raise argparse.ArgumentTypeError(f"a negative pod count: {text!r}")
    return counts


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=10,
                        help="pods timed per handler but vm (default 10)")
    parser.add_argument("--vm-n", dest="vm_iterations", type=int, default=5,
                        help="pods timed for vm (default 5: a TCG boot is seconds)")
    parser.add_argument("--pods", type=pod_counts, default=(5,),
                        help="idle pods for the memory measurement but vm, or a list of "
                             "counts (default 5; 0: skip)")
    parser.add_argument("--vm-pods", type=pod_counts, default=(3,),
                        help="idle pods for vm's memory measurement, or a list of counts, "
                             "each measured in turn (e.g. 1,5,10; default 3; 0: skip)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of rest before PSS is read (default 3)")
    parser.add_argument("--handlers", default=",".join(HANDLERS),
                        help=f"corrald's handlers to measure (default {','.join(HANDLERS)})")
    parser.add_argument("--burst", type=int, default=10,
                        help="pods asked for at once, after the rest (default 10; 0: none)")
    parser.add_argument("--burst-handlers", default=f"vm,vm-pool,native,{REFERENCE}",
                        help=f"which rows get the burst (default vm,vm-pool,native,"
                             f"{REFERENCE})")
    parser.add_argument("--pool", type=int, default=10,
                        help="the vm-pool handler's pool size (default 10: a burst of 10 "
                             "from the pool)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    opts = parser.parse_args(argv)
    opts.handlers = [h for h in opts.handlers.split(",") if h]
    opts.burst_handlers = {h for h in opts.burst_handlers.split(",") if h}
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if os.geteuid() != 0:
        print("sandboxes.py: needs root (pods, mounts, bridges, VMs)", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, cri.interrupt)
    load_start = load_average()
    others_qemu = sum(1 for _, cmdline in process_table().values()
                      if os.path.basename(cmdline.split(" ", 1)[0]).startswith("qemu-system"))
    daemons: list = []
    subjects: list[Subject] = []
    versions: dict[str, str] = {}
    notes: list[str] = []
    leftovers: dict[str, list[str]] = {}
    swept: list[str] = []
    interrupted = False
    try:
        corrald = BenchCorrald(short_base(), "corralb4", "10.99.54.0/24")
        with open(corrald.config, "a") as f:
            f.write(COLD_VM + POOLED_VM.format(size=opts.pool))
        daemons.append(corrald)
        containerd = Containerd(short_base(), "corralb5", "10.99.55.0/24")
        daemons.append(containerd)
        subjects = subjects_for(corrald, containerd, opts)
        started, failures = start_side_by_side(corrald, containerd)
        versions.update(started)
        for subject in subjects:
            if subject.daemon.name in failures:
                subject.fail("start", failures[subject.daemon.name], clean=False)
        if "corrald" in started:
            offered, info = offered_handlers(corrald)
            for subject in subjects:
                if subject.daemon is corrald and subject.handler not in offered:
                    reason = info.get(subject.handler, {}).get("unavailable") or \
                        f"not configured (offered: {', '.join(sorted(offered))})"
                    subject.skipped = f"corrald does not offer {subject.handler!r}: {reason}"
            accelerator = info.get("vm", {}).get("accelerator")
            if accelerator and "vm" in opts.handlers:
                notes.append(f"vm accelerator: {accelerator.get('name')}"
                             + (f" ({accelerator['warning']})" if accelerator.get("warning")
                                else ""))
            versions["runsc"] = tool_version(["runsc", "--version"])
            versions["qemu"] = tool_version(["qemu-system-x86_64", "--version"])
        if shutil.which(RUNSC_SHIM):
            notes.append(f"{RUNSC_SHIM} is installed, but containerd+runsc is not measured "
                         "by this bench yet")
        else:
            notes.append(f"containerd+runsc: not measured: {RUNSC_SHIM} is not installed "
                         "(Debian's runsc package ships only /usr/bin/runsc)")
        if others_qemu:
            notes.append(f"{others_qemu} QEMU process(es) of others ran on the host at the "
                         "start (TCG is CPU-bound: they slow the vm boots)")
        measure(subjects, opts)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; cleaning up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes, sockets = sweep(daemons)
        leftovers.update(stop_daemons(daemons))
        swept, leftovers["sweep"] = finish_sweep(processes, sockets)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if swept:
        print(f"sandboxes.py: removed after the daemons' own cleanup: {', '.join(swept)}",
              file=sys.stderr)
    for name, left in leftovers.items():
        if left:
            print(f"sandboxes.py: {name} left behind: {', '.join(left)}", file=sys.stderr)
    if interrupted:
        return 130
    report = summarize(subjects, versions, notes, opts, (load_start, load_average()))
    print(json.dumps(report, indent=2) if opts.json else format_table(report))
    return 0 if not any(s.error for s in subjects) and not any(leftovers.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
