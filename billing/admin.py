"""Staff views of billing: packages are editable; purchases and provider events are
the books' evidence and read-only (money moves only through billing.services)."""

from django.contrib import admin, messages

from billing import services
from billing.models import CreditPackage, PaymentEvent, Purchase
from credits.admin.toolkit import ReadOnlyAdmin, ReadOnlyInline, money_column


@admin.register(CreditPackage)
class CreditPackageAdmin(admin.ModelAdmin):
    list_display = ["name", "amount", "is_active", "position"]
    list_editable = ["is_active", "position"]

    amount = money_column("amount_micros", "Amount", sortable=True)


class PaymentEventInline(ReadOnlyInline):
    model = PaymentEvent
    fields = ["event_type", "event_id", "received_at", "deliveries", "outcome", "note"]
    readonly_fields = fields
    show_change_link = True


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at", "user_email", "amount", "provider", "status", "refunded", "refund_shortfall",
    ]
    list_filter = ["status", "provider", "created_at"]
    search_fields = ["user_email", "provider_session_id", "provider_payment_id", "id"]
    date_hierarchy = "created_at"
    inlines = [PaymentEventInline]
    actions = ["refund_test_purchases"]

    amount = money_column("amount_micros", "Amount", sortable=True)
    refunded = money_column("refunded_micros", "Refunded", sortable=True, zero="—")
    # Refunded at the provider but already spent: money staff may want to recover.
    refund_shortfall = money_column("refund_shortfall_micros", "Refund not taken back",
                                    sortable=True, zero="—")

    @admin.action(description="Refund in full (TEST MODE purchases only)")
    def refund_test_purchases(self, request, queryset) -> None:
        for purchase in queryset:
            try:
                recorded = services.refund_test_purchase(purchase=purchase)
            except services.PurchaseRefused as exc:
                self.message_user(request, f"{purchase}: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"{purchase}: {recorded.note}", messages.SUCCESS)


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "provider", "event_type", "event_id", "outcome", "deliveries",
                    "processed_at"]
    list_filter = ["provider", "event_type", "outcome"]
    search_fields = ["event_id", "object_reference", "note"]
    date_hierarchy = "received_at"
