"""`featurescope` run in this process (the subprocess form is `conftest.run_cli`)."""

from __future__ import annotations

from featurescope.cli import main


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `featurescope ARGS`; an argparse exit counts as a status."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code)
    out = capsys.readouterr()
    return code, out.out, out.err
