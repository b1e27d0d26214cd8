"""Users for tests of the pages and the API: staff or not, with a given set of runs_app permissions."""


def make_user(django_user_model, name, *, permissions, staff=True):
    """A user ``name`` (password ``pw-<name>``) holding exactly these runs_app permission codenames."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password="pw-" + name, is_staff=staff)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="runs_app",
                                                        codename__in=permissions))
    return user
