"""What every command shares: how an error is told and which exit code it gives."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

import click

from bcscan.errors import BcscanError, ExitCode


def fail(message: str, code: int = ExitCode.CANNOT_RUN) -> NoReturn:
    """One line on stderr, never a traceback, and the command's exit code."""
    click.echo(f"bcscan: error: {' '.join(str(message).split()) or 'failed'}", err=True)
    sys.exit(int(code))


@contextmanager
def reported_errors() -> Iterator[None]:
    """A BcscanError raised inside becomes its one-line message and its class's exit code."""
    try:
        yield
    except BcscanError as exc:
        fail(str(exc), exc.exit_code)


class OneLineErrors(click.Group):
    """The command group whose usage errors (a missing argument, an unknown option or command) are one
    line, `bcscan: error: ...`, with the exit code 2, as every other error: not Click's four."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, windows_expand_args=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `bcscan` alone: the help, as Click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            context = getattr(exc, "ctx", None)
            fail(exc.format_message() + (f" (see '{context.command_path} --help')" if context else ""), exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


def renamed_option(old: str, new: str, value, replacement):
    """The value of an option that has a new name; the old spelling is still accepted for one
    version, with a warning."""
    if value is None:
        return replacement
    click.echo(f"bcscan: warning: {old} is renamed {new}; the old name will be removed in the next version",
               err=True)
    if replacement is not None:
        fail(f"{old} and {new} are the same option: give only {new}")
    return value


def say_reconciled(reconciliation) -> None:
    """What reconciling the review with the run in the folder set aside, if anything (review.store.Reconciliation)."""
    if reconciliation.dropped or reconciliation.reopened:
        click.echo(f"bcscan: review: {reconciliation.dropped} cell decision(s) set aside, their cells are not in this "
                   f"run any more ({reconciliation.kept} kept; all in the history); {reconciliation.reopened} "
                   "sign-off(s) reopened", err=True)
