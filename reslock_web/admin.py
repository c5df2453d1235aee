from __future__ import annotations

from django.contrib import admin

from reslock_web.models import ApiToken, Holder, Limit, LockEvent, SyncRun, Waiter


class ReadOnly(admin.ModelAdmin):
    """Synced rows mirror Prefect: editing them here would only be overwritten (or lie)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Limit)
class LimitAdmin(ReadOnly):
    list_display = ["name", "kind", "status", "active_slots", "limit", "changed_at", "gone_at"]
    list_filter = ["kind", "status", "active"]
    search_fields = ["name", "resource"]


@admin.register(Holder)
class HolderAdmin(ReadOnly):
    list_display = ["limit", "flow_run_name", "task_run_name", "condition", "acquired_at"]
    list_filter = ["condition", "source"]


@admin.register(Waiter)
class WaiterAdmin(ReadOnly):
    list_display = ["limit", "position", "flow_run_name", "task_run_name", "waiting_since"]


@admin.register(LockEvent)
class LockEventAdmin(ReadOnly):
    list_display = ["occurred", "event", "limit_name", "flow_run_name", "closed_reason"]
    list_filter = ["event"]


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnly):
    list_display = ["started_at", "ok", "duration_ms", "limits", "holders", "waiters", "error"]
    list_filter = ["ok"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # tokens are issued by `manage.py reslock_token`, which shows the secret once
