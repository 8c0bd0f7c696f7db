"""A signed-in browser's cookies, for HTTP clients calling the live server as that user."""

from django.test import Client


def session_cookies(user) -> dict[str, str]:
    browser = Client()
    browser.force_login(user)
    return {"sessionid": browser.cookies["sessionid"].value}
