"""The shop's URLs: the front page (/health/ is answered by shop.health before these)."""
from django.urls import path

from . import views

urlpatterns = [path("", views.index)]
