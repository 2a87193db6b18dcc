"""The shop: a small Django app of the example box (settings, models, views in one package)."""
