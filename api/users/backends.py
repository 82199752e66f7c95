"""
The admin API's login: email and password of an active staff account, through Django's
authentication backends so that django-axes (the first backend) sees every attempt.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend


class StaffEmailBackend(ModelBackend):
    """
    Authenticates `email` + `password`, case-insensitively on the email, for active staff only.

    Only `authenticate(request, email=..., password=...)` reaches it: the admin form's
    `username=` does not bind to this signature, so Django skips this backend there.

    An unknown email, a wrong password, an inactive account and a non-staff account all end
    in None, so Django's `authenticate` reports each as a failed login (axes counts it) and
    the caller cannot tell them apart. A password is hashed in every case, as ModelBackend
    does, so neither can the time taken.
    """

    def authenticate(self, request, email=None, password=None):
        if email is None or password is None:
            return None
        User = get_user_model()
        user = User._default_manager.filter(email__iexact=email).first()
        if user is None:
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None

    def user_can_authenticate(self, user):
        return super().user_can_authenticate(user) and user.is_staff
