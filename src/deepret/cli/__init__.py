"""The `deepret` command: parses arguments and calls the library. Errors: one line, exit status 2.

`deepret.cli.parser` builds the parser (importing no implementation: `deepret --help` loads no
torch); each command's handler, in the module of its group (benchmarks, index, train, data, serve),
imports what it runs when it runs."""
from __future__ import annotations

import sys
import traceback
import warnings

from deepret.cli.parser import build_parser
from deepret.errors import DeepretError, DeepretWarning

__all__ = ["build_parser", "main"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """deepret's own warnings as one line on stderr; any other warning as Python shows it."""
    text = (f"deepret: warning: {message}\n" if issubclass(category, DeepretWarning)
            else warnings.formatwarning(message, category, filename, lineno, line))
    (file or sys.stderr).write(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _show_warning
    debug = "--debug" in argv  # anywhere on the line, also after the command's own options
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.handler(args)
    except DeepretError as exc:
        if debug:
            traceback.print_exc()
        print(f"deepret: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepret: interrupted; finished files are kept, run the command again to go on", file=sys.stderr)
        return 130
