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
                 rest: str | None = None):
        self.name = name
        self.help = help
        self.handler = handler
        self.options = list(options)
        self.positionals = positionals
        self.optional = optional  # positionals that may be left out (after the required)
        self.rest = rest  # collects everything after the positionals, flags included


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
            raise UsageError(f"flag provided but not defined: {arg.partition('=')[0]}")
        if option.value is None:
            values[option.dest] = inline.lower() not in ("false", "0") if has_value else True
            continue
        if not has_value:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: {arg}")
            inline = argv[i]
            i += 1
        try:
            if option.multiple:
                values[option.dest].append(option.convert(inline))
            else:
                values[option.dest] = option.convert(inline)
        except ValueError:
            raise UsageError(f"invalid value {inline!r} for flag {arg}") from None
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
    if len(positionals) < needed:
        missing = command.positionals[len(positionals)]
        raise UsageError(f'"{command.name}" requires the {missing} argument')
    if len(positionals) > needed + len(command.optional):
        raise UsageError(f'"{command.name}": unexpected argument {positionals[-1]!r}')
    for i, name in enumerate(command.positionals + command.optional):
        values[name] = positionals[i] if i < len(positionals) else None
    return Args(**values)


def usage(prog: str, about: str, global_options: list[Option], commands: list[Command]) -> str:
    lines = [f"{prog}: {about}", "", f"usage: {prog} [global options] COMMAND [options] ARGS",
             "", "commands:"]
    lines += [f"  {c.name:<10} {c.help}" for c in commands]
    lines += ["", "global options:"] + [_option_line(o) for o in global_options]
    return "\n".join(lines)


def command_usage(prog: str, command: Command) -> str:
    args = " ".join(f"<{p}>" for p in command.positionals)
    args += "".join(f" [{p}]" for p in command.optional)
    args += f" [{command.rest}...]" if command.rest else ""
    lines = [f"usage: {prog} {command.name} [options] {args}".rstrip(), "", command.help]
    if command.options:
        lines += ["", "options:"] + [_option_line(o) for o in command.options]
    return "\n".join(lines)


def _option_line(option: Option) -> str:
    names = ", ".join(option.names) + (f" {option.value}" if option.value else "")
    return f"  {names:<28} {option.help}"
