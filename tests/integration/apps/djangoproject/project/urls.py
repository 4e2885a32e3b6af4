from __future__ import annotations

from django.contrib import admin
from django.urls import path

from project import views

urlpatterns = [
    path("", views.index),
    path("admin/", admin.site.urls),
    path("upload", views.upload),
    path("stream", views.stream),
    path("absolute", views.absolute),
]
