"""What every provider's deploy shares: the exit codes and the error an operator must fix."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DeployError(Exception):
    """A problem the operator must fix; the message says what."""
