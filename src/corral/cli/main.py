"""`corral`: the command line people use — images on a data root, pods through corrald."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    from corral.cli import images, pods

    top = argparse.ArgumentParser(prog="corral", description="corral: containers and pods")
    top.add_argument("--root", help="data root for image commands (default /var/lib/corral, "
                     "or $CORRAL_ROOT)")
    top.add_argument("--socket", help="corrald's socket (default /run/corral/corral.sock)")
    top.add_argument("--registries-conf", help="containers-registries.conf(5) file")
    top.add_argument("--auth-file", help="Docker config.json / containers-auth.json")
    top.add_argument("--certs-dir", help="per-registry CA directories")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    images.add_commands(sub)
    pods.add_commands(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    from corral.cli.pods import CliError
    from corral.images.errors import ImageError

    opts = parser().parse_args(argv)
    try:
        return opts.func(opts)
    except KeyboardInterrupt:
        return 130
    except (CliError, ImageError, ValueError, OSError) as e:  # the message, no traceback
        print(f"corral: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
