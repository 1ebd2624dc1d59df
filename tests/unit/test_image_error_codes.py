"""Image errors become gRPC codes by their class, in one table (cri/server.py), never by text."""

from __future__ import annotations

import ast
import errno
import inspect
import sqlite3
from pathlib import Path

import grpc
import pytest

from corral.cri import server
from corral.images import errors
from corral.sandbox import errors as sandbox_errors

SRC = Path(server.__file__).resolve().parents[1]
Code = grpc.StatusCode


@pytest.mark.parametrize("error, code", [
    (errors.NotFound, Code.NOT_FOUND),
    (errors.NoMatchingPlatform, Code.NOT_FOUND),
    (errors.InvalidArgument, Code.INVALID_ARGUMENT),
    (errors.InvalidReference, Code.INVALID_ARGUMENT),
    (errors.InUse, Code.FAILED_PRECONDITION),
    (errors.Unauthenticated, Code.UNAUTHENTICATED),
    (errors.PermissionDenied, Code.PERMISSION_DENIED),
    (errors.Blocked, Code.PERMISSION_DENIED),
    (errors.RegistryUnavailable, Code.UNAVAILABLE),
    (errors.RegistryFailed, Code.UNKNOWN),
    (errors.ConfigInvalid, Code.FAILED_PRECONDITION),
    (errors.Unsupported, Code.FAILED_PRECONDITION),
    (errors.ContentInvalid, Code.FAILED_PRECONDITION),
    (errors.DigestMismatch, Code.FAILED_PRECONDITION),
    (errors.LayerInvalid, Code.FAILED_PRECONDITION),
    (errors.SnapshotConflict, Code.INTERNAL),
    (errors.NoSpace, Code.RESOURCE_EXHAUSTED),
    (sandbox_errors.NotFound, Code.NOT_FOUND),
    (sandbox_errors.InvalidArgument, Code.INVALID_ARGUMENT),
    (ValueError, Code.INTERNAL),
])
def test_each_error_class_has_its_code(error, code):
    # The message is irrelevant: words that once chose codes change nothing.
    assert server.status_code(error("image 'x' not found: invalid reference, registry")) == code


def test_every_image_error_class_is_in_the_table():
    """A new class must be given a code; only the base and a bug are INTERNAL."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.ImageError) and c is not errors.ImageError]
    assert len(classes) >= 17
    unlisted = [c.__name__ for c in classes
                if not any(base in server._CODES for base in c.__mro__)]
    assert unlisted == []
    assert server.status_code(errors.ImageError("unclassified")) == Code.INTERNAL


def _raised_names(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            found.append((name, node.lineno))
    return found


def test_the_images_layer_raises_only_specific_classes():
    for path in sorted((SRC / "images").glob("*.py")):
        raised = _raised_names(path)
        assert [line for name, line in raised if name == "ImageError"] == [], path.name
        assert [line for name, line in raised if name in ("ValueError", "RuntimeError")
                ] == [], path.name


def test_no_code_is_chosen_by_message_text():
    """No `"..." in str(error)` (or in a message variable) anywhere at the edge."""
    tree = ast.parse((SRC / "cri" / "server.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.In) for op in node.ops) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            right = node.comparators[0]
            assert not (isinstance(right, ast.Call) and getattr(right.func, "id", "") == "str"), \
                ast.unparse(node)
            assert not (isinstance(right, ast.Name) and right.id in ("text", "message")), \
                ast.unparse(node)


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code, details):
        self.code, self.details = code, details
        raise _Aborted


@pytest.mark.parametrize("error, code", [
    (errors.NoSpace("no space left on /var/lib/corral"), Code.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated("r/x: manifest latest: unauthorized (HTTP 401)"),
     Code.UNAUTHENTICATED),
    (errors.InvalidReference("invalid reference 'A': must be lower case 'A'"),
     Code.INVALID_ARGUMENT),
])
def test_rpc_aborts_with_the_code_and_the_message(error, code):
    class Servicer:
        @server.rpc
        def PullImage(self, request, context):
            raise error

    context = _Context()
    with pytest.raises(_Aborted):
        Servicer().PullImage(None, context)
    assert (context.code, context.details) == (code, str(error))


def test_running_out_of_space_is_no_space_naming_the_root():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (v BLOB)")
    db.execute("PRAGMA max_page_count = 4")  # SQLITE_FULL, as on a full disk
    with pytest.raises(errors.NoSpace, match=r"^no space left on /data/root$"):
        with errors.space_checked("/data/root"):
            db.execute("INSERT INTO t VALUES (?)", (bytes(1 << 20),))
    for full in (errno.ENOSPC, errno.EDQUOT):
        with pytest.raises(errors.NoSpace, match=r"^no space left on /data/root$"):
            with errors.space_checked("/data/root"):
                raise OSError(full, "full")
    with pytest.raises(OSError, match="Input/output"):  # other failures stay what they are
        with errors.space_checked("/data/root"):
            raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(sqlite3.OperationalError, match="syntax"):
        with errors.space_checked("/data/root"):
            db.execute("SELEC 1")
