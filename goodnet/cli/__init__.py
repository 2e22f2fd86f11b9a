"""The `goodnet` command: a thin shell over the library. `main` parses the command line, runs the
command on the device asked for, and turns every refusal into one `goodnet: error:` line with exit
status 2 (Ctrl-C: 130, SIGTERM: 143), leaving no output half-written.

parser builds the options (from the groups in options), commands makes the library call of each.
`defend`'s repairs, their options and their help come from the repair registry; nothing here names
a repair's settings.
"""

from __future__ import annotations

import os
import signal
import sys

from ..allocator import keep_freed_memory
from ..devices import using_device
from ..errors import GoodnetError, SettingsError
from ..io.output_dir import release_output
from .commands import COMMANDS
from .parser import build_parser


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so every staging area is cleaned up as on Ctrl-C."""


def _terminate(signum, frame):
    """Raise Terminated where the program is; a repeated SIGTERM while goodnet stops (finished grid
    cells kept, pool workers ended, staging removed: seconds) is ignored, so it cannot cut that
    short or print a second message."""
    _install(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _install(signum, handler):
    """signal.signal where allowed (the main thread); None elsewhere (e.g. a library's worker)."""
    if handler is None:
        return None
    try:
        return signal.signal(signum, handler)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    previous = _install(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        keep_freed_memory()  # before any model: training steps reuse their buffers instead of faulting them in
        with using_device(getattr(args, "device", "cpu")):
            try:
                COMMANDS[args.command](args)
            except SystemExit as exc:  # only code goodnet was told to run (a --factory) exits like this
                raise SettingsError(
                    f"code goodnet ran on your behalf (a --factory?) tried to end the program "
                    f"(exit status {exc.code!r})"
                ) from None
    except GoodnetError as exc:
        print(f"goodnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `goodnet demo | head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("goodnet: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("goodnet: terminated", file=sys.stderr)
        return 143
    finally:
        _install(signal.SIGTERM, previous)  # first: a late SIGTERM ends the program as it would without goodnet
        release_output()
    return 0


__all__ = ["build_parser", "main"]
