"""Release one holder of a resource from a shell, through the same path as the board's page."""

from __future__ import annotations

import time
import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from reslock_web.models import Limit, Operation, OperationKind, OperationStatus
from reslock_web.web.api_operations import find_holder
from reslock_web.web.operate import submit


class Command(BaseCommand):
    help = (
        "Release a stale or dead holder of a resource: the same checks, plan, refusals and "
        "audit as the board's Release page, carried out by the Celery worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the resource's name on the board")
        parser.add_argument(
            "--holder",
            required=True,
            help="its flow run, task run or lease id, or a run name only one holder goes by",
        )
        parser.add_argument("--reason", required=True, help="why, for the audit trail")
        parser.add_argument(
            "--as",
            dest="username",
            required=True,
            help="the operator it is asked for (needs the reslock.operate permission)",
        )
        parser.add_argument(
            "--crash-flow-run",
            action="store_true",
            help="also mark a stale holder's flow run crashed (only if the whole run is dead)",
        )
        parser.add_argument(
            "--wait",
            type=int,
            default=0,
            metavar="SECONDS",
            help="follow the operation until it ends, at most this long (default: do not wait)",
        )

    def handle(self, *args: object, **options: object) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None or not user.is_active:
            raise CommandError(f"No active user {options['username']!r}.")
        if not user.has_perm("reslock.operate"):
            raise CommandError(
                f"{user.get_username()!r} may not operate locks (the Lock operators group)."
            )
        name = str(options["name"])
        limit = Limit.objects.present().prefetch_related("holders").filter(name=name).first()
        if limit is None:
            raise CommandError(f"No resource named {name!r} is on the board.")
        holder = find_holder(limit, str(options["holder"]))
        if holder is None:
            shown = ", ".join(
                h.flow_run_name or h.task_run_name or h.key for h in limit.holders.shown()
            )
            raise CommandError(
                f"{options['holder']!r} names no single holder of {name!r} "
                f"(its holders: {shown or 'none'})."
            )
        data = {
            "token": str(uuid.uuid4()),  # one run of the command, one operation
            "limit_id": str(limit.prefect_id),
            "holder": str(holder.pk),
            "reason": str(options["reason"]),
            "crash_flow_run": "on" if options["crash_flow_run"] else "",
        }
        submission = submit(user, OperationKind.RELEASE_HOLDER, limit, holder, data, via="command")
        if not submission.form.is_valid():
            problems = "; ".join(
                f"{field}: {' '.join(errors)}" for field, errors in submission.form.errors.items()
            )
            raise CommandError(f"Not asked: {problems}")
        if not submission.plan.allowed:
            plan = submission.plan
            raise CommandError(f"Refused: {plan.summary} {plan.safety}".strip())
        operation = submission.operation
        self.stdout.write(f"operation {operation.pk} asked: {submission.plan.summary}")
        wait = int(options["wait"] or 0)
        if wait > 0:
            operation = self._follow(operation, wait)
            self.stdout.write(f"operation {operation.pk} {operation.status}: {operation.message}")
            if operation.status != OperationStatus.SUCCEEDED:
                raise CommandError(f"The operation ended {operation.status}.")

    def _follow(self, operation: Operation, seconds: int) -> Operation:
        deadline = time.monotonic() + seconds
        while True:
            operation.refresh_from_db()
            if operation.finished or time.monotonic() >= deadline:
                if not operation.finished:
                    raise CommandError(
                        f"operation {operation.pk} still {operation.status} after {seconds} s: "
                        "follow it on the board's operation page"
                    )
                return operation
            time.sleep(1)
