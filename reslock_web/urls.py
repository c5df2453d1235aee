from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from reslock_web import api, operate_views, views

urlpatterns = [
    path("", views.board, name="board"),
    path("board/changes", views.board_changes, name="board-changes"),
    path("resources/<path:name>", views.resource, name="resource"),
    path("operate/bulk-release", operate_views.bulk_release, name="bulk-release"),
    path("operate/<str:action>/<path:name>", operate_views.operate, name="operate"),
    path("operations/<int:pk>", operate_views.operation, name="operation"),
    path("operations/bulk/<uuid:batch>", operate_views.bulk, name="bulk"),
    path("audit", operate_views.audit, name="audit"),
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/resources", api.resources, name="api-resources"),
    path("api/v1/resources/<path:name>", api.resource, name="api-resource"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
