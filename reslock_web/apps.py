from __future__ import annotations

from django.apps import AppConfig


class ReslockConfig(AppConfig):
    name = "reslock_web"
    label = "reslock"
    verbose_name = "reslock"

    def ready(self) -> None:
        from django.core.checks import register
        from django.db.models.signals import post_delete, post_save

        from reslock_web.operations import fence
        from reslock_web.sync import health

        register(fence.check_operation_timeout)
        from reslock_web.models import Heartbeat, SyncRun

        # The banner's answer is reused for a second (health.freshness); a change saved in
        # this process shows at once.
        for model in (SyncRun, Heartbeat):
            post_save.connect(health.forget, sender=model, dispatch_uid=f"forget-{model.__name__}")
            post_delete.connect(
                health.forget, sender=model, dispatch_uid=f"forget-del-{model.__name__}"
            )
