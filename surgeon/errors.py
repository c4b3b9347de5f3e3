"""The one error type users see: a single line that says what to change."""


class SurgeonError(Exception):
    """Bad input or a missing asset. `surgeon.run` prints it as one line and exits with code 2."""
