"""Seeded benchmark datasets on disk: a media tree plus a manifest of (relative path, size).

Must not talk to a database or a bucket; run.py loads the manifest into PostgreSQL and checks
buckets against it. A dataset is cached under ``<cache>/data/<name>-<scale>-<seed>-v<version>/`` and
reused while its ``manifest.json`` (written last) exists, so an interrupted build is redone.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

GENERATOR_VERSION = 1  # bump when the generated names or contents change
KIB = 1024
MIB = 1024 * KIB
POOL_BYTES = 32 * MIB  # contents are slices of one seeded random pool: fast, incompressible

# Names a Django app really stores, in several scripts (all NFC; r2migrate flags NFD names).
_NON_ASCII_STEMS = (
    "café_menu",
    "grüße_an_alle",
    "résumé_final",
    "日本語の資料",
    "报告_2023",
    "Ελληνικά_έγγραφα",
    "отчёт_за_квартал",
    "página_1",
    "naïve_façade",
    "ünïcödé",
    "מסמך",
    "فاتورة",
    "한국어_파일",
)
_ASCII_STEMS = ("invoice", "contract", "avatar", "screenshot", "export", "notes", "scan", "photo")
_EXTENSIONS = (".pdf", ".png", ".jpg", ".csv", ".txt", ".docx", ".xlsx")


@dataclass(frozen=True)
class Dataset:
    """A media tree on disk and what it holds."""

    name: str
    media_root: Path
    files: tuple[tuple[str, int], ...]  # (relative path with '/', size in bytes), sorted

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def median_bytes(self) -> int:
        sizes = sorted(size for _, size in self.files)
        return sizes[len(sizes) // 2] if sizes else 0

    def describe(self) -> dict[str, object]:
        return {
            "files": self.file_count,
            "bytes": self.total_bytes,
            "mib": round(self.total_bytes / MIB, 1),
            "median_bytes": self.median_bytes,
            "largest_bytes": max((s for _, s in self.files), default=0),
            "non_ascii_names": sum(1 for p, _ in self.files if not p.isascii()),
            "media_root": str(self.media_root),
        }


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(rng.lognormvariate(math.log(median), sigma))))


def _fit_total(sizes: list[int], total: int, lo: int, hi: int) -> list[int]:
    """Scale sizes so they add up to ``total`` exactly (the shape stays log-normal)."""
    if not sizes:
        return sizes
    for _ in range(4):
        factor = total / sum(sizes)
        sizes = [max(lo, min(hi, round(s * factor))) for s in sizes]
    sizes[-1] = max(0, sizes[-1] + total - sum(sizes))
    return sizes


def _small_plan(rng: random.Random, count: int, total: int) -> list[tuple[str, int]]:
    """Uploads of a typical app: log-normal sizes, median ~24 KiB, clipped to 200 B .. 2 MiB."""
    sizes = [_lognormal(rng, 24 * KIB, 1.0, 200, 2 * MIB) for _ in range(count)]
    sizes = _fit_total(sizes, total, 200, 2 * MIB)
    out = []
    for i, size in enumerate(sizes):
        ext = rng.choice(_EXTENSIONS)
        stem = rng.choice(_ASCII_STEMS)
        folder = f"uploads/user_{rng.randint(1, 40)}/{2019 + i % 6}/{1 + i % 12:02d}"
        rel = f"{folder}/{stem}_{i:06d}{ext}"
        out.append((rel, size))
    return out


def _large_plan(count: int, size: int) -> list[tuple[str, int]]:
    return [(f"archives/backup_{i:02d}.bin", size) for i in range(count)]


def _mix_plan(rng: random.Random, count: int) -> list[tuple[str, int]]:
    """A realistic tree: mostly small uploads, some documents of a few MiB, a few multipart files;
    a third of the names are non-ASCII (several scripts) and some hold spaces."""
    out = []
    large = max(1, round(count * 0.01))
    medium = max(1, round(count * 0.17))
    for i in range(count):
        if i < large:
            size = rng.randint(9 * MIB, 33 * MIB)  # above the 8 MiB multipart threshold
        elif i < large + medium:
            size = _lognormal(rng, 400 * KIB, 0.9, 64 * KIB, 6 * MIB)
        else:
            size = _lognormal(rng, 24 * KIB, 1.0, 200, 2 * MIB)
        roll = rng.random()
        if roll < 0.33:
            stem = rng.choice(_NON_ASCII_STEMS)
        elif roll < 0.45:
            stem = f"{rng.choice(_ASCII_STEMS)} copy ({rng.randint(1, 9)})"
        else:
            stem = rng.choice(_ASCII_STEMS)
        folder = rng.choice(("documents", "photos", "exports", "pièces jointes", "共有"))
        rel = f"media/{folder}/u{rng.randint(1, 25)}/{stem}_{i:05d}{rng.choice(_EXTENSIONS)}"
        out.append((rel, size))
    return out


def _tiny_plan(count: int, rng: random.Random) -> list[tuple[str, int]]:
    """Many tiny files for the inventory / dry-run scale check (rows, not bytes, dominate)."""
    return [(f"rows/{i // 1000:04d}/row_{i:07d}.txt", rng.randint(64, 1024)) for i in range(count)]


def plan_dataset(name: str, *, scale: float, seed: int) -> list[tuple[str, int]]:
    """(relative path, size) of every file of dataset ``name`` at ``scale``; deterministic."""
    rng = random.Random(f"{name}:{seed}")
    if name == "small":
        count = max(10, round(10_000 * scale))
        return _small_plan(rng, count, round(384.5 * MIB * count / 10_000))
    if name == "large":
        # 8 files at any scale (it is the per-file bandwidth that is measured), each >= 16 MiB
        # so that every tool still goes multipart.
        return _large_plan(8, max(16 * MIB, round(128 * MIB * scale)))
    if name == "mix":
        return _mix_plan(rng, max(20, round(2_000 * scale)))
    if name == "rows100k":
        return _tiny_plan(max(100, round(100_000 * scale)), rng)
    raise ValueError(f"unknown dataset {name!r}")


def _pool(seed: int) -> bytes:
    return random.Random(f"pool:{seed}").randbytes(POOL_BYTES)


def _write_file(path: Path, size: int, pool: bytes, rel: str) -> None:
    """Unique content: a digest of the name, then pool bytes from a name-derived offset."""
    head = hashlib.sha256(rel.encode()).digest()
    offset = int.from_bytes(head[:4], "big") % POOL_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(head[:size])
        left = size - min(size, len(head))
        while left > 0:
            piece = pool[offset : offset + min(left, 4 * MIB)]
            fh.write(piece)
            left -= len(piece)
            offset = (offset + len(piece)) % POOL_BYTES


def build_dataset(cache_dir: Path, name: str, *, scale: float, seed: int) -> Dataset:
    """Generate dataset ``name`` under ``cache_dir`` (or reuse a complete earlier one)."""
    folder = cache_dir / "data" / f"{name}-{scale:g}-{seed}-v{GENERATOR_VERSION}"
    manifest = folder / "manifest.json"
    media_root = folder / "media"
    if manifest.is_file():
        files = tuple((str(p), int(s)) for p, s in json.loads(manifest.read_text("utf-8")))
        return Dataset(name, media_root, files)
    if folder.exists():
        shutil.rmtree(folder)  # a build that was interrupted
    planned = sorted(plan_dataset(name, scale=scale, seed=seed))
    pool = _pool(seed)
    for rel, size in planned:
        _write_file(media_root / rel, size, pool, rel)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(planned, ensure_ascii=False), encoding="utf-8")
    tmp.replace(manifest)
    return Dataset(name, media_root, tuple(planned))
