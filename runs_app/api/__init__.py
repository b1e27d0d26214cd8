"""The internal REST API (Django REST framework). Include ``runs_app.api.urls`` under any prefix, e.g. ``api/``."""
