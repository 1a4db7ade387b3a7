"""User-facing errors: one line naming the problem and the fix; the CLI turns them into exit 2."""


class UserError(Exception):
    """Bad input from the user (not a bug): printed as one line, exit status 2, no traceback."""
