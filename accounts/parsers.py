"""The API's JSON parser (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]): DRF's, refusing with
a ParseError, so a 400 in the API's error envelope (inference.errors), the bodies that used to
pass the parser and crash later as a 500."""

from __future__ import annotations

import re

from rest_framework import parsers
from rest_framework.exceptions import ParseError

_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONParser(parsers.JSONParser):
    """DRF's JSONParser, plus two refusals:

    - a body nested past Python's recursion limit: `json` raises RecursionError there,
      which DRF does not catch (it catches ValueError);
    - a lone UTF-16 surrogate, sent as the escape "\\ud800": valid JSON syntax, but not a
      character, so the text cannot be encoded as UTF-8 for a backend, a hash or the
      response (a valid pair such as "\\ud83d\\ude00" is decoded into one character and
      passes).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
        if _holds_lone_surrogate(data):
            raise ParseError("JSON parse error - a string holds a lone UTF-16 surrogate "
                             "(\\ud800-\\udfff), which is not a character.")
        return data


def _holds_lone_surrogate(data) -> bool:
    # Iterative: the parsed body may be nested almost as deep as the recursion limit.
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
