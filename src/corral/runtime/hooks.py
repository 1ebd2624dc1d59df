"""OCI hooks: run each with the container's state on stdin, in order, with its timeout.

Where each kind runs (the OCI runtime spec, as runc does it):

  prestart, createRuntime  the runtime, in its namespaces, once the init's
                           mounts exist and before pivot_root
  createContainer          the init, in the container's namespaces, before
                           pivot_root (so the path is the host's)
  startContainer           the init, after `start`, just before execve (the
                           path is the container's)
  poststart                `start`, after the program was released
  poststop                 `delete`, after everything else is gone

A failing prestart/createRuntime/createContainer hook fails `create` (which
cleans up); a failing startContainer hook stops the container; poststart and
poststop failures are logged and the rest go on.

Only `os` and the built-in `time` and `_signal` are used: the init runs hooks after
pivot_root, where the host's Python library cannot be imported.
"""

from __future__ import annotations

import _signal  # built in: hooks run in the init after pivot_root
import os
import time

from corral.runtime.errors import RuntimeFailure
from corral.spec import fastjson
from corral.spec.runtime import Hook


class HookFailed(RuntimeFailure):
    pass


def hooks_to_state(hooks: dict[str, list[Hook]]) -> dict[str, list[dict]]:
    """The hooks as plain JSON, for state.json (start and delete run some)."""
    return {kind: [{"path": h.path, "args": h.args, "env": h.env, "timeout": h.timeout}
                   for h in items] for kind, items in hooks.items() if items}


def hooks_from_state(saved: dict, kind: str) -> list[Hook]:
    return [Hook(**h) for h in saved.get(kind, [])]


def run_hooks(kind: str, hooks: list[Hook], state: dict) -> None:
    """Run `hooks` in order; the first failure raises HookFailed naming it."""
    payload = fastjson.dumps(state).encode()
    for i, hook in enumerate(hooks):
        run_hook(hook, payload, f"hooks.{kind}[{i}]")


def run_hooks_warning(kind: str, hooks: list[Hook], state: dict, warn) -> None:
    """Run every hook; a failure is reported through `warn` and the rest still run."""
    payload = fastjson.dumps(state).encode()
    for i, hook in enumerate(hooks):
        try:
            run_hook(hook, payload, f"hooks.{kind}[{i}]")
        except HookFailed as e:
            warn(str(e))


def run_hook(hook: Hook, state: bytes, where: str) -> None:
    stdin_read, stdin_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the hook
        try:
            os.dup2(stdin_read, 0)
            env = dict(entry.partition("=")[::2] for entry in hook.env)
            os.execve(hook.path, hook.args or [hook.path], env)
        except BaseException as e:  # noqa: BLE001 - report and leave, never return
            os.write(2, f"{where}: cannot run {hook.path}: {e}\n".encode())
        os._exit(127)
    os.close(stdin_read)
    try:
        os.write(stdin_write, state)
    except BrokenPipeError:
        pass  # a hook need not read its stdin
    finally:
        os.close(stdin_write)
    status = _wait(pid, hook.timeout)
    if status is None:
        raise HookFailed(f"{where} ({hook.path}): timed out after {hook.timeout}s")
    if status != 0:
        # Go's wording, as runc reports it: "exit status 3", "signal: bad system call".
        how = (f"exit status {status}" if status > 0
               else f"signal: {(_signal.strsignal(-status) or str(-status)).lower()}")
        raise HookFailed(f"{where} ({hook.path}): error running hook: {how}")


def _wait(pid: int, timeout: int | None) -> int | None:
    """The hook's exit code (negative: killed by that signal), or None if it timed out."""
    if timeout is None:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
