"""Money and dates as the pages show them: {% load billing_format %}.

    {{ micros|usd_headline }}  "$19.99"    rounded down: balance hero, nav chip, celebration
    {{ micros|usd }}           "$19.999989" exact, for rows
    {{ when|day }}             "Mar 4, 2025"
    {{ when|moment }}          "Mar 4, 2025 14:05 UTC"
"""

from django import template

from billing import labels
from credits import money

register = template.Library()


@register.filter
def usd_headline(micros) -> str:
    return money.headline_usd(int(micros))


@register.filter
def usd(micros) -> str:
    return money.display_usd(int(micros))


@register.filter
def day(moment) -> str:
    return labels.date_label(moment)


@register.filter
def moment(moment, arg: str = "") -> str:
    return labels.datetime_label(moment, seconds=arg == "seconds")
