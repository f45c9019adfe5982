"""The `bcscan` command group.

Heavy libraries (TensorFlow, OpenSlide, Dask) are imported inside the commands, so that
`bcscan --help` and argument errors answer at once.
"""
from __future__ import annotations

import os

import click

from bcscan import __version__
from bcscan.cli.common import OneLineErrors
from bcscan.cli.report import report_command
from bcscan.cli.review import review_command
from bcscan.cli.scan import scan_command
from bcscan.cli.train import evaluate_command, train_command
from bcscan.errors import EXIT_CODES_HELP

# TensorFlow's C++ start-up chatter is not for a pathologist's log; real errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="bcscan")
def main():
    """Leukemia screening of peripheral blood smear scans.

    Finds every white blood cell in each scan, classifies it as leukemic (blast)
    or normal with a VGG-16 network, and counts per patient. Decision support
    only: every result is to be verified by a qualified reviewer.
    """


main.add_command(scan_command)
main.add_command(report_command)
main.add_command(review_command)
main.add_command(train_command)
main.add_command(evaluate_command)

if __name__ == "__main__":
    main()
