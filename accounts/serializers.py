from rest_framework import serializers

from accounts.fields import StrictCharField
from accounts.models import ApiKey


class RegisterSerializer(serializers.Serializer):
    # Shapes only; the rules (format, uniqueness, strength) are in accounts.services.
    email = StrictCharField(max_length=254, trim_whitespace=True)
    password = StrictCharField(max_length=128, trim_whitespace=False)
    # The code of a referral link, optional ("" or absent: none).
    referral_code = StrictCharField(max_length=32, required=False, allow_blank=True, default="")


class ApiKeySerializer(serializers.ModelSerializer):
    masked = serializers.CharField(read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "masked", "prefix", "last_four", "created_at", "last_used_at",
                  "revoked_at", "active"]
        read_only_fields = fields


class ApiKeyListSerializer(serializers.Serializer):
    """GET /api/keys: the keys under `data`, as OpenAI lists things."""

    data = ApiKeySerializer(many=True)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """POST /api/keys: the new key, its secret shown this once."""

    key = serializers.CharField(read_only=True)

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
