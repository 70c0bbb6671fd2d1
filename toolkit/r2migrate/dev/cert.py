"""A self-signed TLS certificate for the embedded stack's S3 endpoint, made in pure Python.

Must never serve anything but the embedded stack on 127.0.0.1: the key is generated on this
machine, lives beside the stack's data (mode 0600) and is trusted only by clients given its
certificate as their CA bundle. Never touches the network. No dependency: RSA-2048 (Miller-Rabin
primes from ``secrets``), PKCS#1 v1.5 with SHA-256, and just enough DER to write an X.509 v3
certificate and a PKCS#8 key (and to read a certificate's expiry back), because neither the
``cryptography`` package nor the ``openssl`` command can be assumed on a developer's machine.

The certificate is its own CA (``basicConstraints CA:TRUE``, the shape ``openssl req -x509``
gives), with ``subjectAltName`` ``IP:127.0.0.1, DNS:localhost`` and ``extendedKeyUsage
serverAuth``: OpenSSL (Python, botocore, the aws CLI) and Go (weed, s5cmd, rclone) both accept it
as a trust anchor for itself.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = [
    "CertificateFiles",
    "certificate_files",
    "ensure_certificate",
    "make_certificate",
    "not_after",
]

CERT_FILE = "s3-cert.pem"
KEY_FILE = "s3-key.pem"
VALID_DAYS = 825
RENEW_BEFORE = timedelta(days=30)  # a certificate closer than this to its end is replaced
HOSTS = ("127.0.0.1", "localhost")

_KEY_BITS = 2048
_E = 65537
_MR_ROUNDS = 40
_SMALL_PRIMES = tuple(
    n for n in range(3, 2000, 2) if all(n % d for d in range(3, math.isqrt(n) + 1, 2))
)
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_OID_RSA = "1.2.840.113549.1.1.1"
_OID_SHA256_RSA = "1.2.840.113549.1.1.11"
_OID_CN = "2.5.4.3"
_OID_ORG = "2.5.4.10"
_OID_SKI = "2.5.29.14"
_OID_KEY_USAGE = "2.5.29.15"
_OID_SAN = "2.5.29.17"
_OID_BASIC_CONSTRAINTS = "2.5.29.19"
_OID_AKI = "2.5.29.35"
_OID_EKU = "2.5.29.37"
_OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"


@dataclass(frozen=True)
class CertificateFiles:
    """The PEM certificate (also the CA bundle clients trust) and its private key (0600)."""

    cert_file: Path
    key_file: Path


def certificate_files(folder: Path) -> CertificateFiles:
    """Where the certificate and key under ``folder`` are (whether or not they exist)."""
    return CertificateFiles(folder / CERT_FILE, folder / KEY_FILE)


def ensure_certificate(folder: Path, *, hosts: tuple[str, ...] = HOSTS) -> CertificateFiles:
    """The certificate under ``folder``, made when missing, unreadable or near its end."""
    files = certificate_files(folder)
    try:
        fresh = not_after(files.cert_file) - RENEW_BEFORE > datetime.now(UTC)
        fresh = fresh and files.key_file.stat().st_mode & 0o077 == 0
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem, key_pem = make_certificate(hosts)
        # Key first: a crash between the two writes leaves the old certificate, which is missing
        # or near its end (else we would not be here), so the next call remakes both.
        _write(files.key_file, key_pem, 0o600)
        _write(files.cert_file, cert_pem, 0o644)
    return files


def make_certificate(
    hosts: tuple[str, ...] = HOSTS, *, valid_days: int = VALID_DAYS
) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 private key PEM) of a new self-signed RSA-2048 certificate."""
    n, d, p, q = _rsa_key()
    public_key = _seq(_int(n), _int(_E))
    spki = _seq(_seq(_oid(_OID_RSA), _NULL), _bits(public_key))
    key_id = hashlib.sha1(public_key, usedforsecurity=False).digest()
    name = _seq(
        _set(_seq(_oid(_OID_ORG), _utf8("r2migrate embedded stack (development only)"))),
        _set(_seq(_oid(_OID_CN), _utf8(f"r2migrate dev {hosts[0]}"))),
    )
    now = datetime.now(UTC).replace(microsecond=0)
    alt_names = b"".join(
        _tlv(0x87, ipaddress.ip_address(h).packed) if _is_ip(h) else _tlv(0x82, h.encode("ascii"))
        for h in hosts
    )
    extensions = _seq(
        _extension(_OID_BASIC_CONSTRAINTS, _seq(_tlv(0x01, b"\xff")), critical=True),
        # digitalSignature, keyEncipherment, keyCertSign: 0b10100100, two unused bits
        _extension(_OID_KEY_USAGE, _tlv(0x03, b"\x02\xa4"), critical=True),
        _extension(_OID_EKU, _seq(_oid(_OID_SERVER_AUTH))),
        _extension(_OID_SAN, _seq(alt_names)),
        _extension(_OID_SKI, _tlv(0x04, key_id)),
        _extension(_OID_AKI, _seq(_tlv(0x80, key_id))),
    )
    algorithm = _seq(_oid(_OID_SHA256_RSA), _NULL)
    tbs = _seq(
        _tlv(0xA0, _int(2)),  # v3
        _int(secrets.randbits(63) | 1 << 62),  # positive, 8 bytes, never zero
        algorithm,
        name,
        _seq(_time(now - timedelta(hours=1)), _time(now + timedelta(days=valid_days))),
        name,
        spki,
        _tlv(0xA3, extensions),
    )
    cert = _seq(tbs, algorithm, _bits(_sign(tbs, n, d)))
    pkcs1 = _seq(
        _int(0),
        _int(n),
        _int(_E),
        _int(d),
        _int(p),
        _int(q),
        _int(d % (p - 1)),
        _int(d % (q - 1)),
        _int(pow(q, -1, p)),
    )
    pkcs8 = _seq(_int(0), _seq(_oid(_OID_RSA), _NULL), _tlv(0x04, pkcs1))
    return _pem("CERTIFICATE", cert), _pem("PRIVATE KEY", pkcs8)


def not_after(cert_file: Path) -> datetime:
    """The end of validity of the first certificate in a PEM file; ValueError if unreadable."""
    text = cert_file.read_text(encoding="ascii")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ValueError(f"{cert_file}: no PEM certificate")
    der = base64.b64decode(text.split(begin, 1)[1].split(end, 1)[0])
    _, cert, _ = _read_tlv(der, 0)
    _, tbs, _ = _read_tlv(der, cert)
    pos = tbs
    for _ in range(4):  # version, serial, signature algorithm, issuer
        pos = _read_tlv(der, pos)[2]
    _, validity, _ = _read_tlv(der, pos)
    after = _read_tlv(der, validity)[2]
    tag, start, stop = _read_tlv(der, after)
    stamp = der[start:stop].decode("ascii")
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)


# -- RSA ----------------------------------------------------------------------------------------


def _rsa_key() -> tuple[int, int, int, int]:
    """(n, d, p, q) with n of exactly ``_KEY_BITS`` bits and e = 65537."""
    while True:
        p, q = _prime(_KEY_BITS // 2), _prime(_KEY_BITS // 2)
        if p == q:
            continue
        lam = math.lcm(p - 1, q - 1)
        return p * q, pow(_E, -1, lam), max(p, q), min(p, q)


def _prime(bits: int) -> int:
    while True:
        # Top two bits set so that p * q has exactly 2 * bits bits; odd.
        candidate = secrets.randbits(bits) | 0b11 << (bits - 2) | 1
        if any(candidate % small == 0 for small in _SMALL_PRIMES):
            continue
        if (candidate - 1) % _E == 0:  # e must be invertible modulo p - 1
            continue
        if _probably_prime(candidate):
            return candidate


def _probably_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(_MR_ROUNDS):
        x = pow(2 + secrets.randbelow(n - 3), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _sign(message: bytes, n: int, d: int) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256."""
    size = (n.bit_length() + 7) // 8
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    padded = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return pow(int.from_bytes(padded, "big"), d, n).to_bytes(size, "big")


# -- DER ----------------------------------------------------------------------------------------


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + body


def _read_tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the body, end of the body) of the element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, size = der[pos], der[pos + 1]
    pos += 2
    if size & 0x80:
        count = size & 0x7F
        size = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + size > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + size


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(items))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _bits(data: bytes) -> bytes:
    return _tlv(0x03, b"\x00" + data)


def _utf8(text: str) -> bytes:
    return _tlv(0x0C, text.encode("utf-8"))


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | arc & 0x7F)
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _time(when: datetime) -> bytes:
    if when.year < 2050:  # RFC 5280: UTCTime through 2049, GeneralizedTime after
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    flag = _tlv(0x01, b"\xff") if critical else b""  # DER omits the default (false)
    return _seq(_oid(oid), flag, _tlv(0x04, value))


_NULL = b"\x05\x00"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    body = "\n".join(lines)
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode("ascii")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically, never a moment at a wider mode than ``mode``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
    tmp.replace(path)
