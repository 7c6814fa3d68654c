"""The `deepret` command: parses arguments and calls the library. Errors: one line, exit status 2.

Every error a user can meet is one line `deepret: error: ...` (the full traceback with --debug):
deepret's own (DeepretError), and those of the machine: an OSError (a full disk, a read-only
folder...: the file and what to do), no memory left, an optional package not installed.

`deepret.cli.parser` builds the parser (importing no implementation: `deepret --help` loads no
torch); each command's handler, in the module of its group (benchmarks, index, train, data, serve),
imports what it runs when it runs."""
from __future__ import annotations

import sqlite3
import sys
import traceback
import warnings

from deepret.cli.parser import build_parser
from deepret.errors import DeepretError, DeepretWarning
from deepret.fileio import os_error_message, printable

__all__ = ["build_parser", "main"]

# optional packages and the extra of deepret's pyproject.toml that installs them
EXTRAS = {"pymilvus": "milvus", "milvus_lite": "milvus", "selenium": "test", "httpx": "test"}


def error_message(exc: BaseException) -> str | None:
    """The one line for an error a user can meet (None: a bug, shown as a traceback)."""
    if isinstance(exc, DeepretError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return ("out of memory: give a smaller --size or fewer --workers, or close other programs "
                "(the work committed so far is kept: run the command again)")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = exc.name.split(".")[0]
        extra = EXTRAS.get(package)
        install = f"pip install 'deepret[{extra}]'" if extra else f"pip install {package.replace('_', '-')}"
        return f"the Python package {package} is not installed: {install}"
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return f"database error: {exc} (run with --debug to see which file)"
    return None


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
    except (DeepretError, MemoryError, ModuleNotFoundError, OSError, sqlite3.OperationalError) as exc:
        message = error_message(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"deepret: error: {printable(message, backslash=False)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepret: interrupted; finished files are kept, run the command again to go on", file=sys.stderr)
        return 130
