"""The alerts package: the webhook (and the Prometheus rules in tests/web)."""
