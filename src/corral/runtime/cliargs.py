"""A small command-line parser with runc's (urfave/cli's) rules.

Why not argparse: importing it (with `re`, `gettext`, `shutil`) costs about
12 ms, which is most of what a `corral-runtime start` or `kill` should
take.  This parser covers what runc's CLI needs and nothing more:
`--flag value`, `--flag=value`, `-f value`, Go's single-dash long flags
(`-bundle`), boolean flags, `--` and positional arguments.
"""

from __future__ import annotations


class UsageError(Exception):
    pass


class IncorrectUsage(UsageError):
    """The command line itself is wrong (a flag, the number of arguments): as runc, the
    caller gets "Incorrect Usage" and the help on stdout besides the error."""

    def __init__(self, message: str, *, flag: bool = False):
        super().__init__(message)
        self.flag = flag  # runc names a bad flag in its "Incorrect Usage:" header


class Option:
    def __init__(self, names: str, help: str, *, value: str | None = None,
                 default=None, convert=str, multiple: bool = False):
        self.names = names.split(",")
        self.dest = self.names[-1].lstrip("-").replace("-", "_")
        self.help = help
        self.value = value  # the metavar; None for a boolean flag
        self.multiple = multiple  # may be given again: the values collect in a list
        if multiple:
            default = []
        self.default = default if value is not None else bool(default)
        self.convert = convert


class Command:
    def __init__(self, name: str, help: str, handler, options: list[Option] = (),
                 positionals: tuple[str, ...] = (), optional: tuple[str, ...] = (),
                 rest: str | None = None, *, args_usage: str = "", description: str = "",
                 failure_status: int = 1):
        self.name = name
        self.help = help
        self.handler = handler
        self.options = list(options)
        self.positionals = positionals
        self.optional = optional  # positionals that may be left out (after the required)
        self.rest = rest  # collects everything after the positionals, flags included
        self.args_usage = args_usage  # runc's ArgsUsage: the arguments, then notes
        self.description = description
        self.failure_status = failure_status  # runc's exit status when the command fails


class Args:
    """Parsed values as attributes, like argparse's Namespace."""

    def __init__(self, **values):
        self.__dict__.update(values)


def parse_options(argv: list[str], options: list[Option], stop_at_positional: bool
                  ) -> tuple[dict, list[str]]:
    """Options until the first positional (global) or throughout (a command's)."""
    by_name = {}
    for option in options:
        for name in option.names:
            by_name[name.lstrip("-")] = option
    values = {option.dest: list(option.default) if option.multiple else option.default
              for option in options}
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            if stop_at_positional:
                positionals.extend(argv[i:])
                break
            continue
        name, has_value, inline = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise HelpRequested()
        option = by_name.get(name)
        if option is None:
            raise IncorrectUsage(f"flag provided but not defined: -{name}", flag=True)
        if option.value is None:
            values[option.dest] = inline.lower() not in ("false", "0") if has_value else True
            continue
        if not has_value:
            if i >= len(argv):
                raise IncorrectUsage(f"flag needs an argument: -{name}", flag=True)
            inline = argv[i]
            i += 1
        try:
            if option.multiple:
                values[option.dest].append(option.convert(inline))
            else:
                values[option.dest] = option.convert(inline)
        except ValueError:
            raise IncorrectUsage(f'invalid value "{inline}" for flag -{name}: parse error',
                                 flag=True) from None
    return values, positionals


class HelpRequested(Exception):
    pass


def parse_command(command: Command, argv: list[str]) -> Args:
    values, positionals = parse_options(argv, command.options,
                                        stop_at_positional=command.rest is not None)
    needed = len(command.positionals)
    if command.rest is not None:
        values[command.rest] = positionals[needed:]
        positionals = positionals[:needed]
    at_most = needed + len(command.optional)
    if len(positionals) < needed:
        bound = "a minimum of" if at_most > needed or command.rest is not None else "exactly"
        raise IncorrectUsage(f'"{command.name}" requires {bound} {needed} argument(s)')
    if len(positionals) > at_most:
        bound = "a maximum of" if at_most > needed else "exactly"
        raise IncorrectUsage(f'"{command.name}" requires {bound} {at_most} argument(s)')
    for i, name in enumerate(command.positionals + command.optional):
        values[name] = positionals[i] if i < len(positionals) else None
    return Args(**values)


def usage(name: str, prog: str, about: str, description: str, version: str,
          global_options: list[Option], commands: list[Command]) -> str:
    """The whole program's help, laid out as urfave/cli (runc's CLI library) does."""
    rows = [(c.name, c.help) for c in commands]
    rows.append(("help, h", "Shows a list of commands or help for one command"))
    flags = [*global_options, Option("-h,--help", "show help")]
    sections = [
        ("NAME", f"{name} - {about}\n\n{description}"),
        ("USAGE", f"{prog} [global options] command [command options] [arguments...]"),
        ("VERSION", version),
        ("COMMANDS", _table(rows)),
        ("GLOBAL OPTIONS", _table([_flag_row(o) for o in flags])),
    ]
    return "\n\n".join(f"{title}:\n   {body}" for title, body in sections)


def command_usage(name: str, prog: str, command: Command) -> str:
    """One command's help, as urfave/cli shows it: NAME, USAGE, DESCRIPTION, OPTIONS."""
    options = " [command options]" if command.options else ""
    sections = [("NAME", f"{name} {command.name} - {command.help}"),
                ("USAGE", f"{prog} {command.name}{options} {_args_usage(command)}")]
    if command.description:
        sections.append(("DESCRIPTION", command.description))
    if command.options:
        sections.append(("OPTIONS", _table([_flag_row(o) for o in command.options])))
    return "\n\n".join(f"{title}:\n   {body}" for title, body in sections)


def _args_usage(command: Command) -> str:
    if command.args_usage:
        return command.args_usage
    args = " ".join("<container-id>" if p == "id" else f"<{p}>" for p in command.positionals)
    args += "".join(f" [{p}]" for p in command.optional)
    return args + (f" [{command.rest}...]" if command.rest else "")


def _table(rows: list[tuple[str, str]]) -> str:
    """Two columns, the first padded to its widest cell plus two (Go's tabwriter)."""
    width = max(len(left) for left, _ in rows) + 2
    return "\n   ".join(f"{left:<{width}}{right}".rstrip() for left, right in rows)


def _flag_row(option: Option) -> tuple[str, str]:
    """`--name value, -n value` and the usage with its default, as urfave/cli prints."""
    names = sorted(option.names, key=lambda n: not n.startswith("--"))
    suffix = " value" if option.value else ""
    left = ", ".join(f"{'--' if len(n.lstrip('-')) > 1 else '-'}{n.lstrip('-')}{suffix}"
                     for n in names)
    right = option.help
    default = option.default
    if option.value and not option.multiple and default not in (None, ""):
        right += f" (default: {default})" if isinstance(default, int) else (
            f' (default: "{default}")')
    return left, right
