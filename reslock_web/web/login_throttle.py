"""The log-in page, slowing password guesses per account and address with growing delays.

Failures are rows in the database (`LoginFailure`), so several web processes count together.
Each attempt is recorded before its password is checked (see `LoginFailureQuerySet`), and a
refused attempt never reaches the password check and is not counted: the account owner gets
back in once the current delay has passed, however long someone keeps guessing.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import unicodedata
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlencode, urlsplit

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

logger = logging.getLogger(__name__)
_warned_about_proxy = False


class _LoginView(auth_views.LoginView):
    """Django's log-in view, marking a request whose own credentials logged it in."""

    def get_redirect_url(self) -> str:
        # `?next=/login/` would send a logged-in user back here: Django calls that a
        # redirection loop and answers 500. The board is where they wanted to go.
        target = super().get_redirect_url()
        if target and urlsplit(target).path == reverse("login"):
            return ""
        return target

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        self.request.reslock_authenticated_here = True  # type: ignore[attr-defined]
        return super().form_valid(form)


# A logged-in visitor of the page goes on to the board; a POST always checks the password,
# whoever is logged in: only that may count as a successful log-in.
_show_form = _LoginView.as_view(redirect_authenticated_user=True)
_check_password = _LoginView.as_view()


def login_name(posted: str) -> str:
    """The user name as the log-in form hands it to the backend (stripped, NFKC), case-folded.

    Fullwidth or mathematical-bold letters log in as the plain name, so they count as it.
    """
    name = unicodedata.normalize("NFKC", posted.strip())
    return unicodedata.normalize("NFKC", name.casefold())[:150]


def client_network_of(address: str) -> str:
    """What the throttle counts by: an IPv4 address, or the /64 an IPv6 client owns."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:45]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_ip(request: HttpRequest) -> str:
    """The client's address: the connection's, or the one the outermost trusted proxy saw."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.TRUSTED_PROXIES:
        # Each proxy appends the address it received from; only the last N entries are theirs.
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        hops = [h for h in hops if h]
        if len(hops) >= settings.TRUSTED_PROXIES:
            address = hops[-settings.TRUSTED_PROXIES]
    return address


class UndeclaredProxyMiddleware:
    """Warns once per process when requests come through a proxy that nobody declared.

    With `RESLOCK_TRUSTED_PROXIES=0` every client behind such a proxy has the proxy's address,
    so they all share one count of failed log-ins.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        global _warned_about_proxy
        if (
            not _warned_about_proxy
            and not settings.TRUSTED_PROXIES
            and "HTTP_X_FORWARDED_FOR" in request.META
        ):
            _warned_about_proxy = True
            logger.warning(
                "Requests arrive through a proxy (they carry X-Forwarded-For) but "
                "RESLOCK_TRUSTED_PROXIES=0: every client behind it shares the proxy's address "
                "and one count of failed log-ins. Set RESLOCK_TRUSTED_PROXIES to the number of "
                "proxies in front of the web server."
            )
        return self.get_response(request)


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
        return _show_form(request)
    username = login_name(request.POST.get("username", ""))
    attempt = LoginFailure.objects.reserve(
        username, client_network_of(client_ip(request)), timezone.now()
    )
    until = LoginFailure.objects.resume_at(attempt)
    if until is not None:
        attempt.delete()
        return _refused(request, until)
    response = _check_password(request)
    if getattr(request, "reslock_authenticated_here", False):
        LoginFailure.objects.succeeded(attempt)
    else:
        LoginFailure.objects.failed(attempt)
    return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's own log-in form would bypass the throttle: send it to ours."""
    if request.user.is_authenticated:
        # Logged in without staff rights: sending them to log in again would loop.
        raise PermissionDenied("Your account has no access to the admin pages.")
    target = request.GET.get("next") or reverse("admin:index")
    return redirect(f"{reverse('login')}?{urlencode({'next': target})}")
