from rest_framework import serializers

from accounts.models import ApiKey
from credits.models import CreditGrant, LedgerEntry
from credits.money import format_usd


class RegisterSerializer(serializers.Serializer):
    # Shapes only; the rules (format, uniqueness, strength) are in accounts.services.
    email = serializers.CharField(max_length=254, trim_whitespace=True)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


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


class GrantSerializer(serializers.ModelSerializer):
    amount = serializers.SerializerMethodField()
    remaining = serializers.SerializerMethodField()

    class Meta:
        model = CreditGrant
        fields = ["id", "kind", "amount", "remaining", "granted_at", "expires_at"]

    def get_amount(self, grant) -> str:
        return format_usd(grant.amount_micros)

    def get_remaining(self, grant) -> str:
        return format_usd(grant.remaining_micros)


class EntrySerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="entry_type")
    amount = serializers.SerializerMethodField()
    held_change = serializers.SerializerMethodField()
    balance_after = serializers.SerializerMethodField()

    class Meta:
        model = LedgerEntry
        fields = ["id", "type", "amount", "held_change", "balance_after", "description",
                  "reference", "grant_id", "created_at"]

    def get_amount(self, entry) -> str:
        return format_usd(entry.amount_micros)

    def get_held_change(self, entry) -> str:
        return format_usd(entry.held_change_micros)

    def get_balance_after(self, entry) -> str:
        return format_usd(entry.balance_after_micros)
