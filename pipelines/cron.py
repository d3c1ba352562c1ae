"""Cron expressions for KFP recurring runs, checked before they reach the server."""

from __future__ import annotations

from .kfp_client import SubmitError

_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (field, lowest, highest, names mapped to lowest.., whether "?" is allowed)
_CRON_FIELDS = (
    ("seconds", 0, 59, (), False),
    ("minutes", 0, 59, (), False),
    ("hours", 0, 23, (), False),
    ("day-of-month", 1, 31, (), True),
    ("month", 1, 12, _MONTHS, False),
    ("day-of-week", 0, 6, _WEEKDAYS, True),
)


def _cron_value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.lower() in names:
        return low + names.index(text.lower())
    if not text.isdigit():
        allowed = f"{low}-{high}" + (f" or {names[0].upper()}-{names[-1].upper()}" if names else "")
        raise SubmitError(f"cron {field} value {text!r} is not a number ({allowed})")
    value = int(text)
    if not low <= value <= high:
        raise SubmitError(f"cron {field} value {value} is out of range {low}-{high}")
    return value


def _check_cron_item(item: str, field: str, low: int, high: int, names: tuple[str, ...]) -> None:
    base, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        raise SubmitError(f"cron {field} step {step!r} in {item!r} must be a positive integer")
    if base == "*":
        return
    start, dash, end = base.partition("-")
    first = _cron_value(start, field, low, high, names)
    if dash and _cron_value(end, field, low, high, names) < first:
        raise SubmitError(f"cron {field} range {base!r} runs backwards")


def validate_cron(expr: str) -> str:
    """A KFP cron expression (6 fields, seconds first), normalised; SubmitError says what is wrong.

    KFP's scheduler parses with robfig/cron, where a 5-field expression is read seconds-first
    with the weekday dropped: a standard "0 3 * * 0" would silently mean something else.
    """
    fields = expr.split()
    if len(fields) == 1 and fields[0].lower() in _CRON_DESCRIPTORS:
        return fields[0].lower()
    if len(fields) == 5:
        raise SubmitError(
            f"cron {expr!r} has 5 fields; KFP needs 6 fields, seconds first "
            f"(sec min hour day-of-month month day-of-week): did you mean '0 {' '.join(fields)}'?"
        )
    if len(fields) != 6:
        raise SubmitError(
            f"cron {expr!r} has {len(fields)} fields; KFP needs 6, seconds first, "
            f"e.g. '0 0 3 * * 0' (Sundays 03:00:00), or one of {', '.join(_CRON_DESCRIPTORS)}"
        )
    for text, (field, low, high, names, question_ok) in zip(fields, _CRON_FIELDS):
        if text == "?":
            if not question_ok:
                raise SubmitError(f"cron {field} cannot be '?': only day-of-month and day-of-week can")
            continue
        for item in text.split(","):
            if not item:
                raise SubmitError(f"cron {field} {text!r} has an empty list item")
            _check_cron_item(item, field, low, high, names)
    return " ".join(fields)
