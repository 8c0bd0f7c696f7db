from rest_framework import serializers

from accounts.models import ApiKey


class RegisterSerializer(serializers.Serializer):
    # Shapes only; the rules (format, uniqueness, strength) are in accounts.services.
    email = serializers.CharField(max_length=254, trim_whitespace=True)
    password = serializers.CharField(max_length=128, trim_whitespace=False)
    # The code of a referral link, optional ("" or absent: none).
    referral_code = serializers.CharField(max_length=32, required=False, allow_blank=True,
                                          default="")


class ApiKeySerializer(serializers.ModelSerializer):
    masked = serializers.CharField(read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiKey
        fields = ["id", "name", "masked", "prefix", "last_four", "created_at", "last_used_at",
                  "revoked_at", "active"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
