"""The shop's one table: a row per visit of its front page."""
from django.db import models


class Visit(models.Model):
    at = models.DateTimeField(auto_now_add=True)
    path = models.CharField(max_length=200)
