"""Web: everything a browser, a script or Prometheus talks to.

- `views`: the board, a resource's page, the audit pages.
- `operate`: the confirmation pages that plan an operation and queue it.
- `forms`: the operation forms.
- `api`: the JSON API (`/api/v1/...`), token auth in `auth`.
- `metrics`: `/metrics` for Prometheus.
- `login_throttle`, `dberrors`, `converters`, `context_processors`: the plumbing around them.

May import every feature package; nothing below imports from here.
"""
