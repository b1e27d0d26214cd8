"""Make sure the demo site has a superuser to log in with.

The password comes from DJANGO_SUPERUSER_PASSWORD; without it a random one is generated and printed
once, when the user is created. An existing user is left alone unless a password is given.
"""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user if it does not exist (password from DJANGO_SUPERUSER_PASSWORD or generated)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin"))
        parser.add_argument("--email", default=os.environ.get("DJANGO_SUPERUSER_EMAIL", "admin@example.com"))

    def handle(self, *args, username, email, **options):
        User = get_user_model()
        given = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is not None:
            if given:
                user.set_password(given)
                user.save(update_fields=["password"])
                self.stdout.write(f"Admin user {username!r} exists; password set from DJANGO_SUPERUSER_PASSWORD.")
            else:
                self.stdout.write(f"Admin user {username!r} exists; password unchanged.")
            return
        password = given or secrets.token_urlsafe(12)
        User.objects.create_superuser(**{User.USERNAME_FIELD: username}, email=email, password=password)
        if given:
            self.stdout.write(f"Created admin user {username!r} with the password from DJANGO_SUPERUSER_PASSWORD.")
        else:
            self.stdout.write(self.style.SUCCESS(
                f"Created admin user {username!r} with password {password}  (shown once; "
                "set DJANGO_SUPERUSER_PASSWORD to choose it)"
            ))
