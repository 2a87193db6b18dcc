"""The shop's migrations (manage.py migrate)."""
