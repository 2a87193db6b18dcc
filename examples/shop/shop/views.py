"""The front page: records the visit in the database and says how many there have been."""
from django.http import HttpResponse

from .models import Visit


def index(request):
    Visit.objects.create(path=request.path[:200])
    return HttpResponse("shop visits=%d\n" % Visit.objects.count(), content_type="text/plain")
