"""``perhap``'s entry point: parse, run the command, and turn every failure into one line on stderr."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence

from .common import CommandError, one_line, quiet_logging
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``perhap`` with ``argv`` (default: the process's); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_command(argv)
        run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
        if run is None:  # a usage error like any other: usage and one error line, on stderr
            parser.error("a command is needed")
        if args.command != "serve":  # serve sets up logging of its own
            quiet_logging()
            if sys.stdout is None:  # started with stdout closed (>&-): say so before doing anything
                raise CommandError("standard output is closed; to discard the output, send it to /dev/null", 2)
        return run(args)
    except CommandError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `perhap read ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in _CANNOT_WRITE:
            return _unexpected(exc)
        # The output could not be written (a full disk, /dev/full): not a bug of ours.
        print(f"error: could not write the output: {exc.strerror}", file=sys.stderr)
        return 1
    except Exception as exc:
        return _unexpected(exc)


#: Why an output may not be written: a full disk or quota, a file too large, an I/O error.
_CANNOT_WRITE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _unexpected(exc: Exception) -> int:
    """A bug: still one line (PERHAP_DEBUG=1 shows the traceback)."""
    if os.environ.get("PERHAP_DEBUG"):
        raise exc
    message = one_line(str(exc)) or "no message"
    print(f"error: unexpected {exc.__class__.__name__}: {message} (set PERHAP_DEBUG=1 for details)",
          file=sys.stderr)
    return 1
