"""The ``smallmed`` command: each subcommand is a few lines over a public function, and each group of commands
lives in its own module with its parsers beside its functions.

- ``run``: ``train`` (one flag per declared TrainConfig field), ``evaluate``, ``predict``, ``export``.
- ``data``: ``data stats``, ``data audit``, ``data fetch``.
- ``studies``: ``study NAME`` (generated from the studies registry), ``tune``, ``demo``.
- ``tools``: ``rf``, ``cost``, ``explain``, ``models``, ``env``.
- ``ra2``: ``ra2 check``, ``evaluate``, ``train``, ``predict``, ``localiser``.
- ``_common``: the one-line summary of a finished run and the least-value check they share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from .. import __version__
from ..errors import SmallmedError

log = logging.getLogger("smallmed")


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--head`` must never become ``--head-epochs``); subcommands inherit this class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A usage error is one sentence too (``error: smallmed train: ...``, exit 2), with ``--help`` named."""
        raise SmallmedError(f"{self.prog}: {message} (see {self.prog} --help).")


def build_parser() -> argparse.ArgumentParser:
    """The root parser; each command group adds its own subcommands (``smallmed.cli.<group>.add``)."""
    from . import data, ra2, run, studies, tools

    p = _Parser(prog="smallmed", description=__doc__)
    p.add_argument("--version", action="version", version=f"smallmed {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--debug", action="store_true", help="re-raise internal errors with their traceback")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (run, data, studies, tools, ra2):
        group.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SmallmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    quiet = args.quiet or os.environ.get("RANK", "0") != "0"  # one voice under torchrun
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except SmallmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args, argv), file=sys.stderr)
        return 130
    except Exception as e:  # the safety net: one sentence and a log, never a raw traceback
        if args.debug:
            raise
        return _internal_error(args, e)


def _interrupted(args, argv) -> str:
    """What to type to go on after Ctrl-C: the real run folder, or the same study command."""
    import shlex

    if args.command == "train":
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        if run:
            return f"interrupted; resume with `smallmed train --resume {run}`"
        return "interrupted; resume with `smallmed train --resume RUN_DIR` (the folder printed under runs/)"
    if args.command in ("study", "demo"):
        cmd = " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
        return f"interrupted; finished runs are kept: run `smallmed {cmd}` again to resume"
    return "interrupted"


def _internal_error(args, e: Exception) -> int:
    import time
    import traceback

    from ..data.paths import cache_dir

    command = " ".join(str(v) for k, v in vars(args).items() if k.endswith("command") and v) or "smallmed"
    log_dir = cache_dir() / "logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(e)))
        where = str(path)
    except OSError:
        where = "nowhere (the log folder is not writable; rerun with --debug)"
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(
        f"error: internal error in {command}: {message}; the full traceback is in {where}; please report it.",
        file=sys.stderr,
    )
    return 3
