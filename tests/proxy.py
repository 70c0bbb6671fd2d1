"""Moved to ``tests.helpers.proxy``; this name stays for imports not yet updated."""

from tests.helpers.proxy import FaultProxy, Flaky, Request, Rule

__all__ = ["FaultProxy", "Flaky", "Request", "Rule"]
