"""Turn the raw runs into medians, ratios and the markdown table (results.md / results.json).

Must not run anything: it only reads the records run.py collected.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

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
    "peak_tree_rss_mib",
)
PHASE_METRICS = ("wall_s", "client_cpu_s", "peak_rss_mib")
# What a peer is compared on: many small files are about files/s, big ones about bandwidth.
# A "-tls" set is the same dataset over HTTPS, compared on the same metric.
RATIO_METRIC = {"small": "files_per_s", "mix": "files_per_s", "large": "mib_per_s"}
TLS_SUFFIX = "-tls"


def ratio_metric(set_name: str) -> str:
    return RATIO_METRIC.get(set_name.removesuffix(TLS_SUFFIX), "files_per_s")


NOISE_NOTE = (
    "2 cores shared by the client, weed mini and PostgreSQL (and, while this ran, possibly other "
    "people's test suites): compare ratios from one run, not absolute numbers across runs."
)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (set, tool): medians over the valid repeats."""
    order: list[tuple[str, str]] = []
    for r in runs:
        if (r["set"], r["tool"]) not in order:
            order.append((r["set"], r["tool"]))
    rows = []
    for set_name, tool in order:
        mine = [r for r in runs if r["set"] == set_name and r["tool"] == tool]
        valid = [r for r in mine if r["valid"]]
        row: dict[str, Any] = {
            "set": set_name,
            "tool": tool,
            "files": mine[0]["files"],
            "bytes": mine[0]["bytes"],
            "runs": len(mine),
            "valid_runs": len(valid),
            "problems": sorted({r["problem"] for r in mine if r["problem"]}),
            "median": {m: _median(r[m] for r in valid) for m in METRICS},
        }
        phases = sorted({p for r in valid for p in r.get("phases", {})})
        if phases:
            row["phases"] = {
                p: {m: _median(r["phases"][p][m] for r in valid) for m in PHASE_METRICS}
                for p in phases
            }
        rows.append(row)
    return rows


def ratios(
    summary: Sequence[dict[str, Any]], r2migrate_tools: Sequence[str]
) -> list[dict[str, Any]]:
    """r2migrate variant / each peer, on the metric that matters for the set."""
    out = []
    for row in summary:
        if row["tool"] not in r2migrate_tools:
            continue
        metric = ratio_metric(row["set"])
        ours = row["median"][metric]
        ours_run = _run_only(row, metric)
        for peer in summary:
            if peer["set"] != row["set"] or peer["tool"] in r2migrate_tools:
                continue
            theirs = peer["median"][metric]
            out.append(
                {
                    "set": row["set"],
                    "tool": row["tool"],
                    "peer": peer["tool"],
                    "metric": metric,
                    "ratio": ours / theirs if ours and theirs else None,
                    # The sending command alone, without `plan` (inventory, listing, batches).
                    "run_only_ratio": ours_run / theirs if ours_run and theirs else None,
                }
            )
    return out


def _run_only(row: dict[str, Any], metric: str) -> float | None:
    """The set's metric over the median wall time of r2migrate's sending command alone."""
    wall = row.get("phases", {}).get("run", {}).get("wall_s")
    if not wall:
        return None
    return (row["files"] if metric == "files_per_s" else row["bytes"] / 2**20) / wall


def tls_ratios(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tool, its HTTPS median over its HTTP median for each set run both ways."""
    plain = {(r["set"], r["tool"]): r for r in summary}
    out = []
    for row in summary:
        if not row["set"].endswith(TLS_SUFFIX):
            continue
        base = plain.get((row["set"].removesuffix(TLS_SUFFIX), row["tool"]))
        if base is None:
            continue
        metric = ratio_metric(row["set"])
        https, http = row["median"][metric], base["median"][metric]
        out.append(
            {
                "set": row["set"],
                "tool": row["tool"],
                "metric": metric,
                "http": http,
                "https": https,
                "ratio": https / http if https and http else None,
            }
        )
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The whole report as markdown (also printed at the end of a run)."""
    out = [f"# r2migrate bench {result['run_id']}", ""]
    m = result["machine"]
    args = result["args"]
    out.append(
        f"{m['cpus']} CPUs, load average {m['load_avg_start']} at start; scale {args['scale']}, "
        f"{args['repeats']} repeat(s), seed {args['seed']}; took {result['duration_s']:.0f} s. "
        + NOISE_NOTE
    )
    out += ["", "## Datasets", ""]
    out += _table(
        ["set", "files", "MiB", "median", "largest", "non-ASCII names"],
        (
            [
                name,
                f"{d['files']:,}",
                _fmt(d["mib"]),
                f"{d['median_bytes'] / 1024:.1f} KiB",
                f"{d['largest_bytes'] / 2**20:.1f} MiB",
                str(d["non_ascii_names"]),
            ]
            for name, d in result["datasets"].items()
        ),
    )
    out += _headline(result)
    out += ["", "## Throughput (median of the valid repeats)", ""]
    rows = []
    for row in result["summary"]:
        med = row["median"]
        phases = row.get("phases", {})
        split = (
            " + ".join(_fmt(phases[p]["wall_s"]) for p in ("plan", "run") if p in phases)
            if phases
            else ""
        )
        valid = f"{row['valid_runs']}/{row['runs']}"
        if row["problems"]:
            valid += " (" + "; ".join(row["problems"])[:120] + ")"
        rss = _fmt(med["peak_rss_mib"], 0)
        if med["peak_tree_rss_mib"] is not None:
            rss += f" / {_fmt(med['peak_tree_rss_mib'], 0)}"
        rows.append(
            [
                row["set"],
                row["tool"],
                valid,
                _fmt(med["wall_s"]),
                _fmt(med["files_per_s"]),
                _fmt(med["mib_per_s"]),
                _fmt(med["client_cpu_s"]),
                _fmt(med["client_cpu_ms_per_file"], 2),
                _fmt(med["server_cpu_s"]),
                _fmt(med["db_cpu_s"]),
                rss,
                split,
            ]
        )
    out += _table(
        [
            "set",
            "tool",
            "valid",
            "wall s",
            "files/s",
            "MiB/s",
            "client CPU s",
            "client CPU ms/file",
            "weed CPU s",
            "PostgreSQL CPU s",
            "peak RSS MiB (process / tree)",
            "plan + run s",
        ],
        rows,
    )
    out += [
        "",
        "Wall time of r2migrate is `plan` (inventory, bucket listing, batches stored) plus `run`: "
        "the peers also list the source before they send. A run is valid when the command "
        "succeeded and the bucket then held exactly the dataset's keys with the right sizes.",
    ]
    peers = list(dict.fromkeys(r["peer"] for r in result["ratios"]))
    if peers:
        out += [
            "",
            "## r2migrate / peer (files/s for small and mix, MiB/s for large; -tls: over HTTPS)",
            "",
        ]
        keyed = {(r["set"], r["tool"], r["peer"]): r["ratio"] for r in result["ratios"]}
        pairs = sorted({(r["set"], r["tool"]) for r in result["ratios"]}, key=_set_order)
        out += _table(
            ["set", "r2migrate variant", *(f"vs {p}" for p in peers)],
            ([s, t, *(_ratio(keyed.get((s, t, p))) for p in peers)] for s, t in pairs),
        )
        run_only = {(r["set"], r["tool"], r["peer"]): r.get("run_only_ratio") for r in
                    result["ratios"]}  # fmt: skip
        out += [
            "",
            "The same without `plan`: r2migrate's sending command alone (`run` or `worker`), "
            "whose wall time still includes starting Python, the database connection and the "
            "ledger; the peers' wall time is their whole command.",
            "",
        ]
        out += _table(
            ["set", "r2migrate variant", *(f"vs {p}" for p in peers)],
            ([s, t, *(_ratio(run_only.get((s, t, p))) for p in peers)] for s, t in pairs),
        )
    if result.get("tls"):
        out += ["", "## HTTPS / HTTP, per tool (the same server, dataset and metric)", ""]
        out += _table(
            ["set", "tool", "metric", "HTTP", "HTTPS", "HTTPS / HTTP"],
            (
                [
                    r["set"],
                    r["tool"],
                    r["metric"].replace("_per_s", "/s"),
                    _fmt(r["http"]),
                    _fmt(r["https"]),
                    _ratio(r["ratio"]),
                ]
                for r in result["tls"]
            ),
        )
        out += [
            "",
            "HTTPS runs trust the stack's self-signed certificate (`ca_bundle` / `AWS_CA_BUNDLE` "
            "/ `RCLONE_CA_CERT`); certificate checks stay on for every tool.",
        ]
    if result.get("scale_checks"):
        out += ["", "## Scale checks", ""]
        out += _table(
            ["check", "ok", "measured", "target"],
            (
                [c["name"], "yes" if c["ok"] else "NO", c["measured"], c["target"]]
                for c in result["scale_checks"]
            ),
        )
    profile = result.get("profile")
    if profile:
        out += ["", "## Client CPU per file, by where it goes (r2migrate, small files)", ""]
        out += [profile["headline"], ""]
        out += _table(
            [
                "category",
                "plan ms/file",
                "run ms/file",
                "run share",
                "run ms/file unprofiled",
                "biggest in run (profiled s)",
            ],
            (
                [
                    c["category"],
                    _fmt(c["plan_ms_per_file"], 3),
                    _fmt(c["run_ms_per_file"], 3),
                    f"{c['run_share'] * 100:.0f} %",
                    _fmt(c["run_ms_per_file_unprofiled"], 3),
                    ", ".join(f"`{f}` {t:.2f}" for f, t in c.get("run_biggest", [])),
                ]
                for c in profile["categories"]
            ),
        )
    out += ["", "## Tools", ""]
    out += _table(
        ["tool", "version or status", "settings"],
        ([name, t["version"], t["note"]] for name, t in result["tools"].items()),
    )
    if result.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"


def _headline(result: dict[str, Any]) -> list[str]:
    """Per set and tool: files/s, MiB/s, CPU per file, cores busy, r2migrate / each peer."""
    summary = result["summary"]
    peers = list(dict.fromkeys(r["peer"] for r in result["ratios"]))
    keyed = {(r["set"], r["tool"], r["peer"]): r["ratio"] for r in result["ratios"]}
    cpus = result["machine"]["cpus"]

    def per_file_ms(row: dict[str, Any], metric: str) -> str:
        value = row["median"][metric]
        return _fmt(1000 * value / row["files"], 2) if value is not None else "–"

    rows = []
    for row in sorted(summary, key=lambda r: _set_order((r["set"], r["tool"]))):
        med = row["median"]
        busy = med.get("cores_busy")
        rows.append(
            [
                row["set"],
                row["tool"],
                _fmt(med["files_per_s"]),
                _fmt(med["mib_per_s"]),
                _fmt(med["client_cpu_ms_per_file"], 2),
                per_file_ms(row, "server_cpu_s"),
                per_file_ms(row, "db_cpu_s"),
                f"{busy:.2f} of {cpus}" if busy is not None else "–",
                *(_ratio(keyed.get((row["set"], row["tool"], p))) for p in peers),
            ]
        )
    out = ["", "## Summary (medians; r2migrate is `plan` + `run` from a fresh ledger)", ""]
    out += _table(
        [
            "set",
            "tool",
            "files/s",
            "MiB/s",
            "client CPU ms/file",
            "weed CPU ms/file",
            "PostgreSQL CPU ms/file",
            "cores busy",
            *(f"r2migrate / {p}" for p in peers),
        ],
        rows,
    )
    out += [
        "",
        "Cores busy: CPU seconds of every process (the client and its children, weed mini, "
        "PostgreSQL) over wall seconds. Ratios use files/s for small and mix, MiB/s for large.",
    ]
    return out


def _set_order(pair: tuple[str, str]) -> tuple[int, bool, str]:
    order = {"small": 0, "large": 1, "mix": 2}
    base = pair[0].removesuffix(TLS_SUFFIX)
    return order.get(base, 9), pair[0] != base, pair[1]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}×" if value else "–"
