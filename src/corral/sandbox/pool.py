"""Warm pools: shims whose handler made its sandbox before any pod asked for one.

A handler with `pool = N` in its [runtimes.<name>] table (only `vm` can: a VM
restored from its template and run once through a throwaway container, see
shim/handlers/vm.py prepare_sandbox) has N such shims ready:

    <state>/pool/<slot>/shim/      a pooled shim's directory
    <state>/sockets/<slot>.sock    its socket

RunPodSandbox takes a ready slot if there is one: the shim's directory and
socket are renamed to the pod's (one filesystem: the shim's open files, its
lock and its listener follow the rename), the shim is told (`claim`), and the
pod's `start_pod` hands it the sandbox.  With none ready the pod starts as it
would without a pool, so a pool only ever makes a pod faster.  One filler
thread per pool keeps N ready, preparing one at a time, and refills as pods
take them.

Pooled shims are corrald's alone, not pods': they are shut down when corrald
stops, and any a killed corrald left behind are ended at the next start
(`remove_leftovers`, from the recovery).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading

log = logging.getLogger("corrald.pool")

PREPARE_TIMEOUT = 300.0  # the first slot may build the VM template first (~10 s under TCG)
RETRY_AFTER = 30.0       # a slot that failed to prepare: the next try waits this long
PREFIX = "pool-"


class Slot:
    def __init__(self, state: str, slot_id: str):
        self.id = slot_id
        self.dir = os.path.join(state, "pool", slot_id)
        self.shim_dir = os.path.join(self.dir, "shim")
        self.socket = os.path.join(state, "sockets", f"{slot_id}.sock")
        self.shim_pid = 0


class SandboxPool:
    """Up to `size` prepared shims for one handler (a HandlerSpec)."""

    def __init__(self, ctx, spec, size: int):
        self.ctx = ctx
        self.spec = spec
        self.size = size
        self.ready: list[Slot] = []
        self.preparing: Slot | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._fill, name=f"pool-{spec.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self) -> Slot | None:
        """A ready slot, now the caller's (None if none is ready: start a shim as usual).
        A slot whose shim has died is ended and skipped."""
        from corral.shim import liveness

        while True:
            with self._changed:
                slot = self.ready.pop(0) if self.ready else None
                self._changed.notify_all()
            if slot is None:
                return None
            try:
                if liveness.holder(slot.shim_dir) is not None:
                    return slot
            except OSError:
                pass
            log.warning("runtime %s: pooled shim %s is gone", self.spec.name, slot.id)
            _end_slot(slot)

    def claim(self, slot: Slot, pod_id: str, paths) -> int:
        """`slot`'s shim made pod `pod_id`'s (PodPaths `paths`); its PID.  Once its
        directory is renamed the shim is the pod's, and the pod's teardown ends it if a
        later step fails; before that, a failure ends the slot here."""
        from corral.shim.protocol import ShimClient

        try:
            os.rename(slot.shim_dir, paths.shim)
        except OSError:
            self.discard(slot)
            raise
        os.rename(slot.socket, paths.shim_socket)
        with ShimClient(paths.shim_socket, timeout=30) as shim:
            shim.call("claim", id=pod_id, dir=paths.shim, socket=paths.shim_socket)
        shutil.rmtree(slot.dir, ignore_errors=True)
        return slot.shim_pid

    def discard(self, slot: Slot) -> None:
        """A slot that is nobody's: its shim shut down (and its sandbox), its files gone."""
        _end_slot(slot)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            slots, self.ready = self.ready, []
            preparing = self.preparing
            self._changed.notify_all()
        for slot in slots + ([preparing] if preparing else []):
            _end_slot(slot)
        if self._thread.ident is not None:  # started (a Context may close unstarted)
            self._thread.join(10.0)

    def _fill(self) -> None:
        while True:
            with self._changed:
                while not self._closed and len(self.ready) >= self.size:
                    self._changed.wait()
                if self._closed:
                    return
                slot = self.preparing = Slot(self.ctx.config.state,
                                             PREFIX + secrets.token_hex(8))
            made = self._prepare(slot)
            with self._changed:
                self.preparing = None
                if made and not self._closed:
                    self.ready.append(slot)
                    continue
                closed = self._closed
            _end_slot(slot)
            if not closed:
                with self._changed:
                    self._changed.wait(RETRY_AFTER)

    def _prepare(self, slot: Slot) -> bool:
        from corral.shim.protocol import ShimClient, ShimError

        try:
            os.makedirs(slot.shim_dir)
            slot.shim_pid = self.ctx.shims.start(slot.id, slot.shim_dir, slot.socket)
            with ShimClient(slot.socket, timeout=PREPARE_TIMEOUT) as shim:
                shim.call("prepare_sandbox", runtime=self.spec.to_dict())
        except (ShimError, OSError) as e:
            if not self._closed:
                log.warning("runtime %s: a pooled sandbox could not be made: %s",
                            self.spec.name, str(e).splitlines()[0] if str(e) else e)
            return False
        log.info("runtime %s: pooled sandbox %s ready", self.spec.name, slot.id)
        return True


class Pools:
    """corrald's pools, one per handler that asks for one."""

    def __init__(self, ctx):
        self.pools = {spec.name: SandboxPool(ctx, spec, int(spec.options["pool"]))
                      for spec in ctx.config.runtimes.values()
                      if spec.type == "vm" and int(spec.options.get("pool") or 0) > 0
                      and spec.options.get("templates", True) and not spec.unavailable()}

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()

    def get(self, handler_name: str) -> SandboxPool | None:
        return self.pools.get(handler_name)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def remove_leftovers(state: str) -> int:
    """The pooled shims and files of a corrald that did not stop (killed): ended, gone.
    A slot's directory is renamed into a pod's when claimed, so what is here is no pod's."""
    root = os.path.join(state, "pool")
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    for name in names:
        _end_slot(Slot(state, name))
    return len(names)


def _end_slot(slot: Slot) -> None:
    from corral.sandbox.pods import kill_shim
    from corral.shim.protocol import ShimClient, ShimError

    if os.path.exists(slot.socket):
        try:
            with ShimClient(slot.socket, timeout=30) as shim:
                shim.call("shutdown", force=True)
        except (ShimError, OSError) as e:
            log.debug("pooled shim %s: shutdown: %s", slot.id, e)
    if os.path.isdir(slot.shim_dir):
        kill_shim(slot.shim_dir)
    for path in (slot.socket,):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    shutil.rmtree(slot.dir, ignore_errors=True)
