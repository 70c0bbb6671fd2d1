"""A small Wagtail site, copied into a temporary folder by tests/e2e/test_wagtail.py."""
