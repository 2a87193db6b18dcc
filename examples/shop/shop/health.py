"""/health/ before anything else: 200 "ok" once the database answers with the migrated table.

A checker reaches the container by its address, not by a domain of ALLOWED_HOSTS, so this answers
before Django checks the Host header; a missing migration or an unreadable database is a 500."""
from django.http import HttpResponse

from .models import Visit


class HealthMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/health/":
            Visit.objects.exists()
            return HttpResponse("ok\n", content_type="text/plain")
        return self.get_response(request)
