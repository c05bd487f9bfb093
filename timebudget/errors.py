"""User-facing errors: the CLI prints each as one line on stderr and exits non-zero."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): enough to say what failed in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class TimebudgetError(Exception):
    """Bad input or an impossible request, explained in one line (which value, why, what is allowed)."""


class BudgetTooSmall(TimebudgetError):
    """The budget cannot fit start-up, one training step and the final evaluation and checkpoint."""


class PeerLost(Exception):
    """Under torchrun, another process died or stalled: this one stops with one line instead of waiting forever."""
