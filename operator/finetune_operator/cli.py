"""The ``finetune`` command: a thin dispatcher to the subcommands' own modules.

Each subcommand lives in the module that owns its concern and exposes ``cli(argv) -> int``; this
file only routes, so that ``finetune --help`` works without importing kopf or torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (
        "finetune_operator.validation",
        "check FineTuneJob manifests (exit 1 on problems)",
    ),
    "run": ("finetune_operator.local", "run a FineTuneJob on this machine, no cluster needed"),
    "operator": ("finetune_operator.runner", "run the Kubernetes operator"),
    "crd": ("finetune_operator.crdgen", "print (or --write) the CRD generated from the API"),
}


def _usage() -> str:
    lines = ["usage: finetune COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `finetune COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("--version", "version"):
        from finetune_operator import __version__

        print(f"finetune {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"finetune: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    cli: Callable[[list[str]], int] = module.cli
    return cli(args[1:])


if __name__ == "__main__":
    sys.exit(main())
