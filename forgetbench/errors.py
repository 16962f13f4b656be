"""The one exception type the CLI turns into a single-line message and a non-zero exit."""


class ForgetbenchError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 1

    def with_exit_code(self, code: int) -> "ForgetbenchError":
        """This error, exiting with ``code`` (a wrapper keeps the wrapped error's exit code)."""
        self.exit_code = code
        return self


class UsageError(ForgetbenchError):
    """Bad names or options on the command line or in a config file (exit code 2)."""

    exit_code = 2
