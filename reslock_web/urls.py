from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from reslock_web.web import api, api_operations, login_throttle, metrics, views
from reslock_web.web import operate as operate_views
from reslock_web.web.converters import NameConverter

register_converter(NameConverter, "name")

urlpatterns = [
    path("", views.board, name="board"),
    path("board/changes", views.board_changes, name="board-changes"),
    path("resources/<name:name>", views.resource, name="resource"),
    path("runs/<uuid:run_id>", views.run, name="run"),
    # Anything else under runs/ is no flow run id: a page that says so, not a bare 404.
    path("runs/<path:raw>", views.run_not_an_id, name="run-not-an-id"),
    path("operate/bulk-release", operate_views.bulk_release, name="bulk-release"),
    path("operate/<str:action>/<name:name>", operate_views.operate, name="operate"),
    path("operations/<int:pk>", operate_views.operation, name="operation"),
    path("operations/bulk/<uuid:batch>", operate_views.bulk, name="bulk"),
    path("audit", operate_views.audit, name="audit"),
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/resources", api.resources, name="api-resources"),
    path("api/v1/resources/<name:name>", api.resource, name="api-resource"),
    path("api/v1/operations", api_operations.operations, name="api-operations"),
    path("api/v1/operations/<int:pk>", api_operations.operation, name="api-operation"),
    path("api/v1/runs/<uuid:run_id>", api.run, name="api-run"),
    path("api/v1/runs/<path:raw>", api.run_not_an_id, name="api-run-not-an-id"),
    path("metrics", metrics.metrics, name="metrics"),
    path("login/", login_throttle.login, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/login/", login_throttle.admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
]

# A database that is not answering gets a 503 page wherever the error surfaces.
handler500 = "reslock_web.web.dberrors.server_error"
