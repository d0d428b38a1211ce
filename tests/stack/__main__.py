"""``python -m tests.stack build|up|down|status|env``: the test stack by hand."""

from __future__ import annotations

import argparse
import sys

from . import build
from .launcher import Stack, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stack", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down", "status", "env"])
    parser.add_argument("--plane-nodes", type=int, default=3)
    parser.add_argument("--a100-nodes", type=int, default=4)
    parser.add_argument("--h100-nodes", type=int, default=2)
    parser.add_argument(
        "--audit",
        action="store_true",
        help="up: give the apiservers an audit log (.stack/audit/<cluster>.log)",
    )
    args = parser.parse_args(argv)
    from .launcher import default_clusters

    stack = Stack(
        clusters=default_clusters(args.plane_nodes, args.a100_nodes, args.h100_nodes),
        audit=args.audit,
    )
    try:
        if args.command == "build":
            for name, path in sorted(build.build().items()):
                print(f"{name}: {path}")
        elif args.command == "up":
            stack.up()
            print(stack.env().shell_exports())
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            status = stack.status()
            if not status:
                print("stack is not running")
            for name, state in status.items():
                print(f"{name:20} {state}")
            return 0 if stack.is_up() else 1
        elif args.command == "env":
            print(stack.env().shell_exports())
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
