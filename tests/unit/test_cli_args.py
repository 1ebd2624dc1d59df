"""corral-runtime's command line: runc's flag forms, signals, usage errors."""

from __future__ import annotations

import pytest

from corral.runtime.cli import COMMANDS, GLOBAL_OPTIONS, main, parse_signal
from corral.runtime.cliargs import UsageError, parse_command, parse_options


def command(name):
    return next(c for c in COMMANDS if c.name == name)


def test_global_options_stop_at_the_command():
    options, rest = parse_options(["--root", "/r", "--log=/l", "--log-format", "json", "create",
                                   "--bundle", "b", "id"], GLOBAL_OPTIONS, True)
    assert options["root"] == "/r" and options["log"] == "/l" and options["log_format"] == "json"
    assert rest == ["create", "--bundle", "b", "id"]


@pytest.mark.parametrize("argv", [
    ["--bundle", "/b", "--pid-file", "/p", "x"],
    ["-b", "/b", "--pid-file=/p", "x"],
    ["-bundle", "/b", "-pid-file", "/p", "x"],  # Go's single-dash long flags
    ["x", "--bundle", "/b", "--pid-file", "/p"],
])
def test_create_flag_forms(argv):
    args = parse_command(command("create"), argv)
    assert (args.bundle, args.pid_file, args.id) == ("/b", "/p", "x")
    assert args.no_pivot is False and args.preserve_fds == 0


def test_kill_signal_is_optional_and_all_is_a_flag():
    args = parse_command(command("kill"), ["--all", "x"])
    assert args.all and args.signal is None
    assert parse_command(command("kill"), ["x", "KILL"]).signal == "KILL"


@pytest.mark.parametrize("text, number", [("9", 9), ("KILL", 9), ("SIGKILL", 9), ("kill", 9),
                                          ("term", 15), ("SIGUSR1", 10), ("34", 34),
                                          ("0", 0), ("65", 65)])
def test_signals_by_name_and_number(text, number):
    """Any number, as runc: the kernel judges it (0 only checks the process exists)."""
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["SIGNOPE", "-1", "NOPE"])
def test_bad_signals(text):
    with pytest.raises(UsageError, match="unknown signal"):
        parse_signal(text)


@pytest.mark.parametrize("argv, message, status", [
    (["create"], "requires exactly 1 argument(s)", 1),
    (["create", "--nope", "x"], "flag provided but not defined: -nope", 1),
    (["create", "--preserve-fds", "many", "x"], "for flag -preserve-fds: parse error", 1),
    (["frobnicate"], "No help topic for 'frobnicate'", 3),
    (["state", "a", "b"], "requires exactly 1 argument(s)", 1),
    (["kill", "a", "b", "c"], "requires a maximum of 2 argument(s)", 1),
    (["exec"], "requires a minimum of 1 argument(s)", 1),
    (["--nope", "list"], "flag provided but not defined: -nope", 1),
])
def test_usage_errors_are_one_line_with_runcs_status(capsys, argv, message, status):
    """runc's words and statuses (3: urfave/cli's for an unknown command); the help goes to
    stdout after "Incorrect Usage", as runc prints it."""
    assert main(["--root", "/nonexistent-root", *argv]) == status
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1
    if status == 1:
        assert captured.out.startswith("Incorrect Usage") and "NAME:" in captured.out


@pytest.mark.parametrize("text, size", [("1024", 1024), ("64m", 64 * 2**20), ("64M", 64 * 2**20),
                                        ("2g", 2 * 2**30), ("1GiB", 2**30), ("100k", 102400),
                                        ("-1", -1)])
def test_update_sizes(text, size):
    from corral.runtime.cli import _bytes

    assert _bytes(text, "memory") == size


def test_update_bad_size():
    from corral.runtime.cli import _bytes

    with pytest.raises(UsageError, match="invalid value for memory: invalid size"):
        _bytes("lots", "memory")


def test_exec_collects_repeated_flags_and_the_command():
    args = parse_command(command("exec"), ["-e", "A=1", "--env", "B=2", "-c", "CAP_KILL", "x",
                                           "sh", "-c", "echo --not-a-flag"])
    assert args.env == ["A=1", "B=2"] and args.cap == ["CAP_KILL"]
    assert args.id == "x" and args.command == ["sh", "-c", "echo --not-a-flag"]
