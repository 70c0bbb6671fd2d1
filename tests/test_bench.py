"""Smoke test of the benchmark harness (`make bench` = bench/run.py) on a tiny dataset.

Runs r2migrate and, only when a previous `make bench` already installed it, s5cmd (nothing is
installed here), over HTTP (``small``) and HTTPS (``small-tls``, the stack's self-signed CA).
Asserts that every run was checked against the bucket and the shape of results.json; never a
timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "run.py"
METRICS = (
    "wall_s",
    "files_per_s",
    "mib_per_s",
    "client_cpu_s",
    "client_cpu_ms_per_file",
    "server_cpu_s",
    "db_cpu_s",
    "cores_busy",
    "peak_rss_mib",
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_smoke_run_checks_buckets_and_writes_results(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    installed_tools = REPO / ".bench-cache" / "tools"
    if installed_tools.is_dir():  # reuse peers that `make bench` installed; never install here
        (cache / "tools").symlink_to(installed_tools)
    results = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--scale",
            "0.002",
            "--sets",
            "small,small-tls",
            "--repeats",
            "1",
            "--tools",
            "r2migrate,s5cmd",
            "--no-install",
            "--cache-dir",
            str(cache),
            "--results-dir",
            str(results),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = results.iterdir()
    result = json.loads((run_dir / "results.json").read_text("utf-8"))
    assert (run_dir / "results.md").read_text("utf-8") in done.stdout  # the table is printed

    markdown = (run_dir / "results.md").read_text("utf-8")
    summary_md = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "| files/s | MiB/s |" in summary_md
    assert "| cores busy |" in summary_md or "| cores busy" in summary_md
    assert result["schema_version"] == 1
    for key in ("run_id", "args", "machine", "tools", "datasets", "runs", "summary", "ratios"):
        assert key in result
    assert result["args"]["sets"] == ["small", "small-tls"]
    small = result["datasets"]["small"]
    assert small["files"] == 20
    assert small["non_ascii_names"] == 0
    assert result["datasets"]["small-tls"] == small  # the same files, sent over HTTPS

    s5cmd_there = result["tools"]["s5cmd"]["available"]
    expected_tools = {"r2migrate", "s5cmd"} if s5cmd_there else {"r2migrate"}
    assert {r["tool"] for r in result["runs"]} == expected_tools
    if not s5cmd_there:
        assert any("s5cmd skipped" in note for note in result["notes"])
        assert "unavailable" in result["tools"]["s5cmd"]["version"]
    for run in result["runs"]:
        assert run["valid"], run
        check = run["bucket_check"]
        assert check["ok"]
        assert check["objects"] == check["expected"] == small["files"]
        assert check["missing"] == check["extra"] == check["wrong_size"] == 0
        for metric in METRICS:
            assert isinstance(run[metric], int | float)
            assert run[metric] >= 0
    ours = [r for r in result["runs"] if r["tool"] == "r2migrate"]
    assert [r["set"] for r in ours] == ["small", "small-tls"]
    for run in ours:
        assert set(run["phases"]) == {"plan", "run"}
        assert run["exit_codes"] == {"plan": 0, "run": 0}
        ledger = run["ledger"]["files"]
        assert ledger.get("uploaded", 0) + ledger.get("verified", 0) == 20

    sets = ("small", "small-tls")
    assert {(row["set"], row["tool"]) for row in result["summary"]} == {
        (s, t) for s in sets for t in expected_tools
    }
    for row in result["summary"]:
        assert row["valid_runs"] == row["runs"] == 1
        assert set(row["median"]) >= set(METRICS)
    if s5cmd_there:
        assert [(r["set"], r["tool"], r["peer"]) for r in result["ratios"]] == [
            (s, "r2migrate", "s5cmd") for s in sets
        ]
        for ratio in result["ratios"]:
            assert ratio["metric"] == "files_per_s"
            assert ratio["ratio"] > 0
            assert ratio["run_only_ratio"] > ratio["ratio"]  # plan's time left out
    else:
        assert result["ratios"] == []
    assert {(r["set"], r["tool"]) for r in result["tls"]} == {
        ("small-tls", t) for t in expected_tools
    }
    for tls in result["tls"]:
        assert tls["metric"] == "files_per_s"
        assert tls["ratio"] > 0

    checks = {c["name"].split(" (")[0]: c for c in result["scale_checks"]}
    assert set(checks) == {
        "inventory + dry run of 200 rows",
        "re-run of a finished 20-file batch",
    }
    for check in checks.values():
        assert check["ok"], check  # dry run wrote nothing; re-run sent 0 PUTs, objects unchanged
        assert isinstance(check["target_met"], bool)

    profile = result["profile"]
    assert profile is not None
    assert profile["files"] == 20
    shares = [c["run_share"] for c in profile["categories"]]
    assert abs(sum(shares) - 1) < 0.01
    assert any(c["category"].startswith("hashing") for c in profile["categories"])

    assert not Path(result["stack_root"]).exists()  # the harness's own stack is gone
