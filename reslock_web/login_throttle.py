"""The log-in page, refusing password guesses past a few failures per username and per address.

Failures are rows in the database (`LoginFailure`), so several web processes count together.
A refused attempt never reaches the password check and is not counted: the account owner
gets back in once the window has passed, however long someone keeps guessing.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters

from reslock_web.models import LoginFailure

_login_view = auth_views.LoginView.as_view(redirect_authenticated_user=True)


def client_ip(request: HttpRequest) -> str:
    """The client's address: the connection's, or the one the outermost trusted proxy saw."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.TRUSTED_PROXIES:
        # Each proxy appends the address it received from; only the last N entries are theirs.
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        hops = [h for h in hops if h]
        if len(hops) >= settings.TRUSTED_PROXIES:
            address = hops[-settings.TRUSTED_PROXIES]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address[:45]


def _refused(request: HttpRequest, until: datetime) -> HttpResponse:
    seconds = max(1, math.ceil((until - timezone.now()).total_seconds()))
    minutes = math.ceil(seconds / 60)
    message = (
        "Too many failed log-ins for this username or from your address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")[:150]})
    context = {"form": form, "throttled": message, "next": request.POST.get("next", "")}
    response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
def login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _login_view(request)
    username = request.POST.get("username", "").strip().casefold()[:150]
    ip = client_ip(request)
    until = LoginFailure.objects.blocked_until(username, ip, timezone.now())
    if until is not None:
        return _refused(request, until)
    response = _login_view(request)
    if request.user.is_authenticated:
        LoginFailure.objects.succeeded(username, ip)
    elif response.status_code == 200:  # the form came back with an error
        LoginFailure.objects.failed(username, ip, timezone.now())
    return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's own log-in form would bypass the throttle: send it to ours."""
    if request.user.is_authenticated:
        # Logged in without staff rights: sending them to log in again would loop.
        raise PermissionDenied("Your account has no access to the admin pages.")
    target = request.GET.get("next") or reverse("admin:index")
    return redirect(f"{reverse('login')}?{urlencode({'next': target})}")
