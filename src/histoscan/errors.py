"""The one exception type for mistakes a user can make (bad paths, bad files, bad options)."""


class HistoscanInputError(Exception):
    """Bad input or usage: the CLI prints the message as one line and exits with code 2.

    The message must name the offending file, field or option.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was saved and how to continue: the CLI prints it and exits 130."""
