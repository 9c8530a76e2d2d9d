class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it (exit code 2)."""
    exit_code = 2


class OverwriteRefused(UserError):
    """An output exists and the user did not ask to replace it (exit code 3)."""
    exit_code = 3
