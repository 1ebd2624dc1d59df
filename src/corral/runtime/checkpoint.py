"""`checkpoint` and `restore`: runc's commands for saving a container with CRIU.

corral-runtime has the commands, runc's flags and runc's checks, but not the dump
and restore themselves yet.  What it does is find criu (the global --criu, as runc)
and ask it whether it can work on this kernel (`criu check`), so that the caller
gets the reason in runc's words when it cannot:

  - criu missing:     CRIU version check failed: exec: "criu": executable file not found
                      in $PATH
  - criu check fails: criu failed: type DUMP errno 0, with criu's own error and the log
                      file (dump.log or restore.log in the image directory)

The container is left exactly as it was in every case: nothing is stopped,
created or removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from corral.runtime.errors import InvalidState, RuntimeFailure

_CHECK_TIMEOUT = 30.0  # seconds; `criu check` takes well under one


class CriuUnavailable(RuntimeFailure):
    """criu is missing, or cannot work on this host (its own `check` fails)."""


class CheckpointUnsupported(RuntimeFailure):
    """criu works here, but corral-runtime cannot drive a dump or restore yet."""


def find_criu(criu: str) -> str:
    """The criu binary, as exec would find it; runc's error when there is none."""
    if "/" in criu:
        if os.access(criu, os.X_OK) and os.path.isfile(criu):
            return criu
        raise CriuUnavailable(f"CRIU version check failed: fork/exec {criu}: "
                              "no such file or directory")
    found = shutil.which(criu)
    if found is None:
        raise CriuUnavailable(f'CRIU version check failed: exec: "{criu}": executable '
                              "file not found in $PATH")
    return found


def check_criu(criu: str, image_dir: str, action: str) -> None:
    """`criu check`, its output kept as runc keeps criu's log (<action>.log in the images)."""
    log_name = f"{action}.log"
    try:
        done = subprocess.run([criu, "check"], capture_output=True, text=True,
                              timeout=_CHECK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CriuUnavailable(f"criu failed: type {action.upper()}: {e}") from None
    output = done.stdout + done.stderr
    try:
        with open(os.path.join(image_dir, log_name), "w") as f:
            f.write(output)
    except OSError:
        pass
    if done.returncode != 0:
        raise CriuUnavailable(f"criu failed: type {action.upper()} errno 0: "
                              f"{_first_error(output)}\nlog file: {log_name}")


def _first_error(output: str) -> str:
    """criu's first "Error (file:line): what" line, as "what"."""
    for line in output.splitlines():
        if line.startswith("Error"):
            return line.partition("): ")[2] or line
    return output.strip().splitlines()[-1] if output.strip() else "criu check failed"


def image_dir(path: str | None) -> str:
    """--image-path, or ./checkpoint as runc's default; made if missing, as runc does."""
    path = os.path.abspath(path or "checkpoint")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def check_parent_path(images: str, parent: str | None) -> None:
    if not parent:
        return
    if os.path.isabs(parent):
        raise InvalidState("--parent-path must be relative")
    real = os.path.join(images, parent)
    if not os.path.isdir(real):
        raise InvalidState(f"invalid --parent-path: stat {real}: "
                           + ("not a directory" if os.path.exists(real)
                              else "no such file or directory"))


def check_manage_cgroups_mode(mode: str | None) -> None:
    if mode and mode not in ("soft", "full", "strict"):
        raise InvalidState("Invalid manage cgroups mode")


def check_empty_ns(names: list[str]) -> None:
    """runc takes only the network namespace for --empty-ns."""
    for name in names:
        if name != "network":
            raise InvalidState(f'namespace "{name}" is not supported')


def checkpoint(container, *, criu: str, images: str, parent: str | None = None,
               manage_cgroups_mode: str | None = None, empty_ns: list[str] = (),
               page_server: str | None = None) -> None:
    """Save `container` with criu dump, or say clearly why not; it keeps running."""
    status = container.state.status()
    if status in ("created", "stopped"):
        raise InvalidState(f"Container cannot be checkpointed in {status} state")
    check_parent_path(images, parent)
    if page_server is not None:
        address, _, port = page_server.rpartition(":")
        if not address or not port:
            raise InvalidState("Use --page-server ADDRESS:PORT to specify page server")
        if not port.isdigit():
            raise InvalidState("Invalid port number")
    check_manage_cgroups_mode(manage_cgroups_mode)
    check_empty_ns(list(empty_ns))
    _criu_ready(criu, images, "dump")


def restore(root: str, container_id: str, bundle: str, *, criu: str, images: str,
            manage_cgroups_mode: str | None = None, empty_ns: list[str] = ()) -> None:
    """Bring a container back from `images` with criu restore, or say clearly why not;
    nothing is created either way."""
    from corral.runtime.errors import ConfigInvalid, ContainerExists
    from corral.runtime.state import check_id
    from corral.spec.runtime import SpecError, load_config

    check_id(container_id)
    if os.path.exists(os.path.join(root, container_id)):
        raise ContainerExists(container_id)
    try:
        load_config(os.path.abspath(bundle))
    except SpecError as e:
        raise ConfigInvalid(str(e)) from None
    check_manage_cgroups_mode(manage_cgroups_mode)
    check_empty_ns(list(empty_ns))
    _criu_ready(criu, images, "restore")


def _criu_ready(criu: str, images: str, action: str) -> None:
    binary = find_criu(criu)
    check_criu(binary, images, action)
    raise CheckpointUnsupported(f"criu check passes, but {action} with CRIU is not "
                                "implemented in corral-runtime yet")
