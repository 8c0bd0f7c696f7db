from rest_framework import serializers

from credits.models import CreditGrant, LedgerEntry
from credits.money import format_usd


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
    # What the customer may read: never a staff member's internal reason.
    description = serializers.CharField(source="customer_description", read_only=True)

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
