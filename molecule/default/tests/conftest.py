"""Nothing to share: the helpers live in ../../shared/box_client.py (used by every scenario)."""
