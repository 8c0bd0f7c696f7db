"""Small labels the pages share."""

from django.utils import dateformat, timezone


def minutes_seconds(seconds: float) -> str:
    """"2:59" for 179.2 s: whole seconds rounded up, as the pages' countdown shows them."""
    whole = max(0, int(-(-seconds // 1)))
    return f"{whole // 60}:{whole % 60:02d}"


def epoch_ms(moment) -> int:
    """A datetime as JavaScript's milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)


# The one date format of the pages (UTC, the site's TIME_ZONE): "Mar 4, 2025" and, with the
# time, "Mar 4, 2025 14:05 UTC". Templates use the `day` and `moment` filters (billing_format).
DATE_FORMAT = "M j, Y"
TIME_FORMAT = "H:i"


def date_label(moment) -> str:
    """"Mar 4, 2025" for a date or datetime (datetimes in the site's time zone)."""
    if moment is None or moment == "":
        return ""
    if hasattr(moment, "tzinfo") and timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return dateformat.format(moment, DATE_FORMAT)


def datetime_label(moment, *, seconds: bool = False) -> str:
    """"Mar 4, 2025 14:05 UTC" (with `seconds`, "14:05:09")."""
    if moment is None or moment == "":
        return ""
    local = timezone.localtime(moment)
    clock = dateformat.format(local, TIME_FORMAT + (":s" if seconds else ""))
    return f"{dateformat.format(local, DATE_FORMAT)} {clock} {local.tzname()}"
