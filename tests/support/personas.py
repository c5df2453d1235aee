"""The people the tests act as: an admin, a viewer and an operator (a member of the "Lock
operators" group), with one password; and a browser page logged in as one of them."""

from __future__ import annotations

PASSWORD = "correct horse battery staple"


def make_admin(users):
    return users.objects.create_superuser("alice-admin", "", PASSWORD)


def make_viewer(users):
    return users.objects.create_user("victor-viewer", "", PASSWORD)


def make_operator(users):
    """A member of the "Lock operators" group (made by a migration; transactional tests flush
    it, so it is made again here the same way)."""
    from django.contrib.auth.models import Group, Permission

    group, created = Group.objects.get_or_create(name="Lock operators")
    if created:
        group.permissions.add(
            Permission.objects.get(content_type__app_label="reslock", codename="operate")
        )
    user = users.objects.create_user("olga-operator", "", PASSWORD)
    user.groups.add(group)
    return user


def logged_in(page, live_server, user):
    """`page` with `user`'s session cookie, as after the login form."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    return page
