"""End-to-end tests with third-party Django apps (opt-in: ``make e2e``)."""
