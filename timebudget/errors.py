"""User-facing errors: the CLI prints each as one line on stderr and exits non-zero."""


class TimebudgetError(Exception):
    """Bad input or an impossible request, explained in one line (which value, why, what is allowed)."""


class BudgetTooSmall(TimebudgetError):
    """The budget cannot fit start-up, one training step and the final evaluation and checkpoint."""
