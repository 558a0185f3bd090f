"""`acestep-trainer <command>`: the same functions the web UI's jobs call, for scripts.

Exit status: 0 success; 1 a user error, with a one-line message (a wrong path, a checkpoint of
another model, a missing download, a folder it may not write; tracebacks only with `--debug`); 2
a batch that finished with some files failed (each listed on stderr); 130 stopped on request
(finished work is kept).

The commands live in `acestep.commands` (models, data, training); this module builds the parser
and runs the chosen command.
"""

from __future__ import annotations

import argparse
import os
import sys

from acestep import __version__
from acestep.commands import data, models, training
from acestep.environment.location import compile_cache_dir
from acestep.errors import AceStepError
from acestep.files import describe_os_error
from acestep.library_noise import silence_library_noise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acestep-trainer",
        description="ACE-Step 1.5 LoRA trainer: the commands behind the web UI, for scripts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    models.add_commands(commands)
    data.add_commands(commands)
    training.add_commands(commands)
    return parser


def keep_compiled_kernels() -> None:
    """torch.compile (`run.compile`) keeps the kernels it generates in the system's temporary folder,
    which many systems empty at boot, so the first run after each reboot compiled everything again.
    Keep them in the project's cache folder instead, unless TORCHINDUCTOR_CACHE_DIR says where."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))


def main(argv: list[str] | None = None) -> int:
    silence_library_noise()
    keep_compiled_kernels()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AceStepError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path or disk problem no command foresaw: still one line, naming the path
        if args.debug:
            raise
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
