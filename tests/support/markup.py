"""What a browser would build from a page: the tags and attributes through which markup from
a name or a parameter could run; and Django's escaping, to look for a value shown as text."""

from __future__ import annotations

from html.parser import HTMLParser


class _Markup(HTMLParser):
    """Collects the tags and attributes a browser would build from a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("img", "iframe", "object", "embed", "x-evil"):
            self.problems.append(f"<{tag}>")
        if tag == "script" and not dict(attrs).get("src", "").startswith("/static/"):
            self.problems.append("inline <script>")
        for name, value in attrs:
            if name.startswith("on") or name == "data-evil":
                self.problems.append(f"attribute {name}={value!r} on <{tag}>")
            if name in ("href", "src", "action", "hx-get") and (
                value or ""
            ).strip().lower().startswith("javascript:"):
                self.problems.append(f"{name}={value!r}")


def injected(html: str) -> list[str]:
    """Every tag or attribute of `html` that would run script or load from elsewhere."""
    parser = _Markup()
    parser.feed(html)
    parser.close()
    return parser.problems


def escape(text: str) -> str:
    """`text` as Django's templates escape it."""
    from django.utils.html import escape as django_escape

    return str(django_escape(text))
