"""The REST API under /api/ (Django REST framework); routes in tasks_app.api.urls."""
