"""User-facing errors: one line naming the problem and the fix; the CLI turns them into exit 2."""
import errno


class UserError(Exception):
    """Bad input from the user (not a bug): printed as one line, exit status 2, no traceback."""


# An OSError of a place that cannot take a write, wherever it is (artifact store, Ray Train storage, the temp folder):
# the disk or quota is full, or it is read-only or not ours. A missing file (ENOENT) is not one: it propagates as is.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
