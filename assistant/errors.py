"""The one error type the user sees. Anything else escaping is a bug.

Does not print: the shells (cli.py, ui.py) turn an error into one line.
"""


class AssistantError(Exception):
    """A failure the user can act on; the message says what to do next. Exit code 1."""

    exit_code = 1


class UsageError(AssistantError):
    """The command line itself is wrong. Exit code 2."""

    exit_code = 2
