"""`corral` on a data root: an image error is one line with its message, exit 1, no traceback."""

from __future__ import annotations

import pytest

from corral.cli.main import main


def isolated(tmp_path) -> list[str]:
    """A data root and registry settings of the test's own, none of the host's."""
    (tmp_path / "registries.conf").write_text("")
    (tmp_path / "auth.json").write_text('{"auths": {}}')
    return ["--root", str(tmp_path / "root"), "--registries-conf",
            str(tmp_path / "registries.conf"), "--auth-file", str(tmp_path / "auth.json"),
            "--certs-dir", str(tmp_path / "certs.d")]


@pytest.mark.parametrize("argv, message", [
    (["image", "inspect", "nosuch"], "corral: image 'nosuch' not found\n"),
    (["rmi", "nosuch"], "corral: image 'nosuch' not found\n"),
    (["pull", "-q", "Upper/Case"], "corral: invalid reference 'Upper/Case': must be lower "
                                   "case 'Upper'\n"),
    (["pull", "-q", "--platform", "linux", "busybox"], "corral: "),
    (["tag", "nosuch", "other"], "corral: image 'nosuch' not found\n"),
    (["image", "export", "-o", "/nonexistent-dir/x.tar", "nosuch"],
     "corral: image 'nosuch' not found\n"),
])
def test_image_errors_print_their_message(tmp_path, capsys, argv, message):
    assert main([*isolated(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    assert err.count("\n") == 1


def test_an_unreachable_registry_is_one_line(tmp_path, capsys):
    assert main([*isolated(tmp_path), "pull", "-q", "127.0.0.1:1/app"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("corral: 127.0.0.1:1: ") and "refused" in err
    assert "Traceback" not in err and err.count("\n") == 1
