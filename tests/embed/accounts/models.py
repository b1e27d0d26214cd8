from django.contrib.auth.models import AbstractUser
from django.db import models


class Operator(AbstractUser):
    """A custom user model, as an embedding site would have."""

    team = models.CharField(max_length=50, blank=True)
