"""The images layer's errors: one class per kind of failure, raised where it is detected.

Callers choose by class, never by message text: cri/server.py maps each
class to a gRPC code in one table, the `corral` CLI prints the message.

    ImageError                  the base; never raised itself
    ├── NotFound                no such image here; a registry's HTTP 404
    │   └── NoMatchingPlatform  an index without this platform (containerd: not found)
    ├── InvalidArgument         the caller's input: an empty or ambiguous name, a bad platform,
    │   │                       an import source or export destination that cannot be used
    │   └── InvalidReference    not a valid image reference
    ├── InUse                   a container's snapshot stands on the image
    ├── Unauthenticated         the registry wants credentials or refused them (HTTP 401)
    ├── PermissionDenied        the registry refused access (HTTP 403)
    │   └── Blocked             registries.conf blocks the registry
    ├── RegistryUnavailable     unreachable, TLS failed, or still failing after retries (5xx, 429)
    ├── RegistryFailed          an answer that fits none of the above (an odd status, no token)
    ├── ConfigInvalid           registries.conf, the auth file or certs.d (the node's config)
    ├── Unsupported             well-formed but not usable here: Docker schema 1, a media type
    ├── ContentInvalid          a manifest, config or archive not as it must be, or too big
    │   ├── DigestMismatch      bytes whose digest or size differ from what names them
    │   └── LayerInvalid        a layer that is malformed or hostile (an escape, a bomb)
    ├── SnapshotConflict        the snapshotter's records contradict a request (a bug or a race)
    └── NoSpace                 no space left on the data root (ENOSPC, EDQUOT, SQLite full)
"""

from __future__ import annotations

import errno
from contextlib import contextmanager


class ImageError(Exception):
    """The message says what failed and where (the registry, the digest, the entry)."""


class NotFound(ImageError):
    pass


class NoMatchingPlatform(NotFound):
    pass


class InvalidArgument(ImageError):
    pass


class InvalidReference(InvalidArgument):
    pass


class InUse(ImageError):
    pass


class Unauthenticated(ImageError):
    pass


class PermissionDenied(ImageError):
    pass


class Blocked(PermissionDenied):
    pass


class RegistryUnavailable(ImageError):
    pass


class RegistryFailed(ImageError):
    pass


class ConfigInvalid(ImageError):
    pass


class Unsupported(ImageError):
    pass


class ContentInvalid(ImageError):
    pass


class DigestMismatch(ContentInvalid):
    pass


class LayerInvalid(ContentInvalid):
    pass


class SnapshotConflict(ImageError):
    pass


class NoSpace(ImageError):
    pass


def is_out_of_space(error: BaseException) -> bool:
    """Whether the filesystem, or SQLite writing to it, ran out of space or quota."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    import sqlite3  # here: the CLI imports this module for every command

    if isinstance(error, sqlite3.OperationalError):  # "database or disk is full"
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return False


@contextmanager
def space_checked(root: str):
    """Running out of space inside the block raises NoSpace naming `root`, the data root,
    instead of an errno or SQLite's "database or disk is full"."""
    try:
        yield
    except Exception as e:
        if is_out_of_space(e):
            raise NoSpace(f"no space left on {root}") from e
        raise
