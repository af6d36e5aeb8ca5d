"""``python -m finetune_trainer`` / ``finetune-trainer``: the trainer image's entrypoint.

A thin dispatcher: each subcommand's module exposes ``cli(argv) -> int``.
  launch   what a training pod runs: pull, validate, torchrun train, evaluate, push, report
  train    one torchrun worker (started by launch; not for direct use)
  serve    the built-in inference server
  pull     lay a published run out for another server (vLLM init container)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, str] = {
    "launch": "finetune_trainer.launch",
    "train": "finetune_trainer.train",
    "serve": "finetune_trainer.serve",
    "pull": "finetune_trainer.pull",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[args[0]])
    cli: Callable[[list[str]], int] = module.cli
    return cli(args[1:])


if __name__ == "__main__":
    sys.exit(main())
