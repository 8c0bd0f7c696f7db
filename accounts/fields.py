"""Strict DRF fields for the JSON API, typed as OpenAI validates its requests.

DRF coerces: IntegerField takes "5" and 5.0, BooleanField takes "yes", 1 and "on", FloatField
takes "0.5" and true, CharField takes 123. A client that sends those has a bug it should hear
about, so these refuse them with OpenAI's wording ("Invalid type for 'max_tokens': expected an
integer, but got a string instead."); the exception handler names the parameter (`param`).
Null, blank, bounds and lengths are still DRF's (the checks around `to_internal_value`).
"""

from __future__ import annotations

from rest_framework import serializers

_KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a decimal number"),
          (str, "a string"), (list, "an array"), (dict, "an object"))


def json_kind(value) -> str:
    """How OpenAI names a JSON value's type in its messages ("a string", "an integer"...)."""
    for kind, name in _KINDS:  # bool before int: True is an int in Python
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _refuse(field: serializers.Field, expected: str, data) -> None:
    # A child of a list or dict field is bound with no name: say its parent's.
    name = field.field_name or getattr(field.parent, "field_name", "") or "value"
    raise serializers.ValidationError(
        f"Invalid type for '{name}': expected {expected}, but got "
        f"{json_kind(data)} instead.", code="invalid_type")


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: no "5", no 5.0, no true."""

    def to_internal_value(self, data):
        if not isinstance(data, int) or isinstance(data, bool):
            _refuse(self, "an integer", data)
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number (integer or decimal) only: no "0.5", no true."""

    def to_internal_value(self, data):
        if not isinstance(data, int | float) or isinstance(data, bool):
            _refuse(self, "a number", data)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false only: no "yes", no 1."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            _refuse(self, "a boolean", data)
        return data


class StrictCharField(serializers.CharField):
    """A JSON string only: no 123. max_length bounds the string as sent (the schema's
    maxLength), not what is left after trimming its whitespace."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            _refuse(self, "a string", data)
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of the choices, given as a string (DRF compares str(value), so 1 could match "1")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            _refuse(self, "a string", data)
        return super().to_internal_value(data)
