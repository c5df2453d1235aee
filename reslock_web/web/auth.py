"""Who is asking: a logged-in session for pages, a session or a bearer token for the JSON API."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse, JsonResponse

from reslock_web.models import ApiToken


def api_user_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Accept a session or `Authorization: Bearer <token>`; answer 401 in JSON otherwise."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            user = ApiToken.objects.user_for(header.removeprefix("Bearer ").strip())
            if user is None:
                return JsonResponse({"error": "invalid or revoked API token"}, status=401)
            request.user = user
        elif not request.user.is_authenticated:
            response = JsonResponse(
                {"error": "authentication required: log in or send Authorization: Bearer <token>"},
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="reslock"'
            return response
        return view(request, *args, **kwargs)

    return wrapper
