"""The one exception a user's mistake raises.

A `UserError` carries one sentence that names the file, line or value at fault and the fix.
The CLI prints it without a traceback and exits with status 2; library callers can catch it.
"""


class UserError(Exception):
    """A mistake the user can fix (bad input, unknown recipe, no GPU for 4-bit, ...)."""

    exit_code = 2
