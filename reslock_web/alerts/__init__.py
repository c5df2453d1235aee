"""Alerts: telling people where they already look that a resource needs them.

- `webhook`: a resource entering or leaving a bad status, recorded in the sync's transaction
  (`record`) and posted as Slack-compatible JSON to `RESLOCK_WEBHOOK_URL` by a Celery task with
  retries (`deliver`). The Prometheus rules live in deploy/prometheus/ (see the README).

May import: `reslock_web.models`. The sync calls `record`; `tasks` calls `deliver`.
"""
