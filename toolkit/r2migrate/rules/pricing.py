"""Cloudflare R2's list prices (USD), in one place, and what requests and bytes cost at them.

Must not do I/O or know where the counts come from: inventory's estimate, verify's summary and
the audit's cost-so-far all price their counts here.

Class A = writes and lists (PUT, CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
LIST); Class B = reads (HEAD, GET). Storage is billed per decimal GB-month.
"""

from __future__ import annotations

__all__ = [
    "CLASS_A_USD_PER_MILLION",
    "CLASS_B_USD_PER_MILLION",
    "STORAGE_USD_PER_GB_MONTH",
    "class_a_usd",
    "class_b_usd",
    "storage_usd_per_month",
]

CLASS_A_USD_PER_MILLION = 4.50
CLASS_B_USD_PER_MILLION = 0.36
STORAGE_USD_PER_GB_MONTH = 0.015


def class_a_usd(ops: int) -> float:
    """The price of ``ops`` Class A requests (writes and lists)."""
    return ops * CLASS_A_USD_PER_MILLION / 1e6


def class_b_usd(ops: int) -> float:
    """The price of ``ops`` Class B requests (HEAD, GET)."""
    return ops * CLASS_B_USD_PER_MILLION / 1e6


def storage_usd_per_month(size_bytes: float) -> float:
    """A month of storing ``size_bytes`` (decimal GB, as R2 bills)."""
    return size_bytes / 1e9 * STORAGE_USD_PER_GB_MONTH
