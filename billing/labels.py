"""Small labels the pages share."""


def minutes_seconds(seconds: float) -> str:
    """"2:59" for 179.2 s: whole seconds rounded up, as the pages' countdown shows them."""
    whole = max(0, int(-(-seconds // 1)))
    return f"{whole // 60}:{whole % 60:02d}"


def epoch_ms(moment) -> int:
    """A datetime as JavaScript's milliseconds since the epoch."""
    return int(moment.timestamp() * 1000)
