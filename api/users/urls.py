from django.urls import path

from api.users.views import AdminLoginView, AdminLogoutView, AdminMeView, AdminTokenRefreshView

urlpatterns = [
    path("admin/login", AdminLoginView.as_view(), name="admin-login"),
    path("admin/refresh", AdminTokenRefreshView.as_view(), name="admin-refresh"),
    path("admin/logout", AdminLogoutView.as_view(), name="admin-logout"),
    path("admin/me", AdminMeView.as_view(), name="admin-me"),
]
