"""What people (and machines) read: plans as text, Markdown and JSON; run progress."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`1 target`, `2 targets`, `0 targets`: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
