"""``report.md`` and PNG plots from the suite's results dict (the same dict as ``results.json``).

Rendering is kept apart from measuring so a report can be rebuilt from a ``results.json`` without re-running
anything (``python bench/report.py reports/bench-.../results.json``), and so a step that failed simply leaves
its section saying so. Plots use the Agg backend: the suite runs headless.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import orjson
from matplotlib import ticker

NOISE = (
    "Absolute figures come from a shared, noisy machine (other processes compete for the same cores; see the load "
    "averages beside each step): read them as floors, and compare paths by the ratios measured within this run."
)


def table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(step: dict[str, Any]) -> str:
    return f"_{step['seconds']} s; load average {step['load_before']} before, {step['load_after']} after._"


# -- plots ---------------------------------------------------------------------------------------------------
def plot_verify(step: dict[str, Any], path: Path) -> None:
    rows = step["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.4))
    names = [r["path"] for r in rows][::-1]
    ratios = [r["x_c_loop"] for r in rows][::-1]
    bars = ax.barh(names, ratios, color=["#4c72b0" if v < 2 else "#55a868" for v in ratios])
    ax.axvline(1.0, color="black", lw=1, ls="--", label="libsodium C loop = 1")
    ax.set_xscale("log")
    ax.set_xlabel("verifies/s as a multiple of the C loop (log scale; same run, medians)")
    for bar, v in zip(bars, ratios, strict=True):
        ax.text(bar.get_width() * 1.04, bar.get_y() + bar.get_height() / 2, f"{v:.2f}x", va="center", fontsize=9)
    ax.set_xlim(min(ratios) * 0.5, max(ratios) * 2.5)
    ax.set_title("Verify throughput by path")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_e2e_batch(step: dict[str, Any], path: Path) -> None:
    by_share: dict[float, list[dict[str, Any]]] = {}
    for r in step["results"]:
        if r["target"] == "engine":
            by_share.setdefault(r["repeat_share"], []).append(r)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    sizes: set[int] = set()
    for share, rs in sorted(by_share.items()):
        rs = sorted(rs, key=lambda r: r["batch_size"])
        if len(rs) < 2:
            continue
        xs = [r["batch_size"] for r in rs]
        sizes.update(xs)
        (line,) = a1.plot(xs, [r["scans_per_s"] for r in rs], "o-", label=f"{share:.0%} repeats")
        a2.plot(xs, [r["p99_ms"] for r in rs], "o-", color=line.get_color(), label=f"p99, {share:.0%} repeats")
        a2.plot(xs, [r["p50_ms"] for r in rs], "x:", color=line.get_color(), label=f"p50, {share:.0%} repeats")
    for ax, label in ((a1, "scans/s (load generator on the same cores)"), (a2, "ack latency per request, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes), [str(b) for b in sorted(sizes)])
        ax.minorticks_off()
        ax.set_xlabel("engine batch size (ENGINE_BATCH_SIZE)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    a1.set_title("End-to-end throughput vs batch size")
    a2.set_title("Acknowledgement latency vs batch size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cpu(step: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    mid = step["mid_batch"]
    for target, batch, style in (("engine", mid, "o-"), ("naive", None, "s--")):
        rs = sorted(
            (r for r in step["results"] if r["target"] == target and r["batch_size"] == batch),
            key=lambda r: r["repeat_share"],
        )
        label = f"engine (batch {mid})" if target == "engine" else "naive reference server"
        failed = sorted({c for r in rs for c in r["statuses"] if c != "202"})
        label += f" (answered {', '.join(failed)}!)" if failed else ""
        ax.plot([r["repeat_share"] * 100 for r in rs], [r["cpu_us_per_scan"] for r in rs], style, label=label)
    ax.axhline(
        step["verify_us"], color="grey", ls=":", label=f"verify only, cold, 1 thread ({step['verify_us']:.0f} µs)"
    )
    ax.set_xlabel("repeated codes, % of scans")
    ax.set_ylabel("server CPU µs per scan (all threads)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Server CPU per scan vs repeat share")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trace(step: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for size in step["sizes"]:
        for q in size["queries"]:
            series.setdefault(q["query"], []).append((size["rows"], q["p50_ms"]))
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    ax.axhline(50, color="red", lw=0.8, ls="--", label="target: person trace p50 < 50 ms at 10M")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("rows in the store")
    ax.set_ylabel("p50 latency, ms (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Tracing latency vs table size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown ------------------------------------------------------------------------------------------------
def _verify_md(step: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["path"],
            f"{r['verifies_per_s']:,.0f}",
            f"{r['x_c_loop']:.3f}",
            f"{r['cpu_us_per_op']:.2f}",
            f"{r['cpu_x_c_loop']:.3f}",
            r["note"],
        ]
        for r in step["rows"]
    ]
    parse = [
        f"- parse + lookup per code, {k}: {v['wall_us']:.2f} µs wall, {v['cpu_us']:.2f} µs CPU"
        for k, v in step["parse_lookup"].items()
    ]
    return [
        table(["path", "verifies/s", "x C loop", "CPU µs/op", "CPU x C"], [r[:5] for r in rows]),
        "",
        *parse,
        f"- baseline: {step['baseline']}",
        "- targets: CVerifier 1 thread >= 0.95 x C loop, 2 threads >= 1.7 (needs two idle cores), cache hit >= 20x",
        "",
        "![verify throughput by path](verify.png)",
    ]


def _e2e_md(step: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["target"],
            r["batch_size"] or "-",
            f"{r['repeat_share']:.0%}",
            r["scans"],
            r["rounds"],
            f"{r['scans_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['cpu_us_per_scan']:.1f}",
            f"{r['cpu_us_per_scan'] / step['verify_us']:.2f}",
            ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
        ]
        for r in step["results"]
    ]
    return [
        f"{step['requests']} requests of {step['scans_per_request']} scans, {step['concurrency']} in flight, per "
        "scenario; a fresh engine (embedded chdb, WAL fsync on) per scenario; medians over rounds.",
        f"Verify only (cold, 1 thread, same run): **{step['verify_us']:.1f} µs CPU per code**.",
        "",
        table(
            [
                "target",
                "batch",
                "repeats",
                "scans",
                "rounds",
                "scans/s",
                "p50 ms",
                "p99 ms",
                "CPU µs/scan",
                "x verify",
                "statuses",
            ],
            rows,
        ),
        "",
        *(f"**Warning: {w}**" for w in step.get("warnings", [])),
        "",
        "scans/s is a floor: the load generator shares the cores with the server. CPU µs/scan (all server threads, "
        "from /proc) does not depend on what else runs, and is what the capacity plan uses.",
        "",
        "![e2e vs batch size](e2e_batch.png)",
        "",
        "![CPU per scan vs repeat share](cpu_per_scan.png)",
    ]


def _wal_md(step: dict[str, Any]) -> list[str]:
    rows = [
        [
            int(r["group"]),
            f"{r['appends_s']:,.0f}",
            f"{r['fsyncs_s']:,.0f}",
            f"{r['records_s']:,.0f}",
            f"{r['mb_s']:.1f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
        ]
        for r in step["rows"]
    ]
    return [
        f"WAL on {step['filesystem']}, ~2 KB records, fsync on.",
        "",
        table(["group", "appends/s", "fsyncs/s", "records/s", "MB/s", "p50 ms", "p99 ms"], rows),
    ]


def _store_md(step: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{r['batch_rows']:,}",
            r["inserts_per_round"],
            f"{r['rows_per_round']:,}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['cpu_us_per_row']:.2f}",
        ]
        for r in step["results"]
    ]
    return [
        f"`Store.insert_scans` into a fresh embedded chdb (scans + scans_by_person view), median of "
        f"{step['repeats']} interleaved rounds; CPU is this process's, chdb included.",
        "",
        table(["rows/insert", "inserts", "rows", "rows/s", "CPU µs/row"], rows),
    ]


def _trace_md(step: dict[str, Any]) -> list[str]:
    out: list[str] = []
    names = list(dict.fromkeys(q["query"] for s in step["sizes"] for q in s["queries"]))
    head = ["query", *(f"p50 / p95 ms at {s['rows']:,} rows" for s in step["sizes"])]
    rows = []
    for name in names:
        cells = []
        for s in step["sizes"]:
            q = next((q for q in s["queries"] if q["query"] == name), None)
            cells.append(f"{q['p50_ms']:.1f} / {q['p95_ms']:.1f} (n={q['n']})" if q else "-")
        rows.append([name, *cells])
    fills = ", ".join(
        f"{s['rows']:,} rows at {s['fill_rows_per_s']:,.0f} rows/s" for s in step["sizes"] if s.get("fill_rows_per_s")
    )
    out += [
        table(head, rows),
        "",
        f"Synthetic fill ({fills or 'reused stores'}).",
        "",
        "![tracing p50 vs rows](trace.png)",
    ]
    return out


def _capacity_md(cap: dict[str, Any]) -> list[str]:
    a = cap["assumptions"]
    rows = [
        [
            r["scenario"],
            f"{r['peak']:,.0f}",
            f"{r['repeat_share']:.0%}",
            f"{r['cpu_us_per_scan']:.1f}",
            f"{r['cores']:.1f}",
            r["nodes"],
            f"{r['scans_per_s_at_100pct']:,.0f}",
            f"{r['headroom_x']:.2f}x",
        ]
        for r in cap["rows"]
    ]
    return [
        f"Derived peak = {a['people']:,.0f} people x {a['scans_per_person']} scans/day x {a['peak_hour_share']:.0%} "
        f"in the peak hour / 3600 x burst {a['burst']} = **{cap['derived_peak']:,.0f} scans/s**; design point "
        f"**{cap['design_point']:,} scans/s** ({cap['design_point'] / cap['derived_peak']:.1f}x the derived peak).",
        f"Cores = peak x measured server CPU per scan / {a['utilisation']:.0%} planned utilisation; nodes of "
        f"{a['cores_per_node']} cores. Headroom = what those nodes take at 100 % CPU, over the peak: the "
        f"{1 - a['utilisation']:.0%} kept free covers merges, tracing queries and losing a node's share.",
        "",
        table(
            ["scenario", "scans/s", "repeats", "CPU µs/scan", "cores", "nodes", "scans/s at 100 % CPU", "headroom"],
            rows,
        ),
        "",
        "The CPU per scan is this machine's; the same per-core cost on other hardware is an assumption. Verify the "
        "plan with `bench/capacity.py --cpu-us-per-scan X` and the deployment's own figures.",
    ]


SECTIONS = (
    ("verify", "Verify throughput by path", _verify_md),
    ("e2e", "End-to-end: scans/s, ack latency, server CPU per scan", _e2e_md),
    ("wal", "WAL group commit", _wal_md),
    ("store", "Store inserts", _store_md),
    ("trace", "Tracing latency vs table size", _trace_md),
)
PLOTS = (
    ("verify", "verify.png", plot_verify),
    ("e2e", "e2e_batch.png", plot_e2e_batch),
    ("e2e", "cpu_per_scan.png", plot_cpu),
    ("trace", "trace.png", plot_trace),
)


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """Write ``report.md`` and the plots of every step present in ``doc``; return the paths written."""
    written = []
    for step, name, fn in PLOTS:
        if step in doc["steps"]:
            fn(doc["steps"][step], out / name)
            written.append(out / name)
    m = doc["machine"]
    md = [
        f"# Benchmark report ({doc['mode']} run, {doc['started']})",
        "",
        f"Command: `{doc['command']}` — {doc['seconds']} s in all.",
        "",
        f"> {NOISE}",
        "",
        "## Machine",
        "",
        table(
            ["", ""],
            [[k, m[k]] for k in m if k != "extension_error"]
            + [
                ["extension", "on" if m.get("verifier") == "cython" else f"off ({m.get('extension_error')})"],
                ["load average before / after", f"{doc['load_before']} / {doc['load_after']}"],
            ],
        ),
    ]
    for key, title, section in SECTIONS:
        md += ["", f"## {title}", ""]
        if key in doc["steps"]:
            md += [_load(doc["steps"][key]), "", *section(doc["steps"][key])]
        else:
            md.append(f"**Not measured**: {doc['errors'].get(key, 'step not selected')}")
    md += ["", "## Capacity plan", ""]
    md += _capacity_md(doc["capacity"]) if doc.get("capacity") else ["**Not computed**: the e2e step did not run."]
    if doc["errors"]:
        md += ["", "## Errors", "", *(f"- `{k}`: {v}" for k, v in doc["errors"].items())]
    md += ["", "Raw output of each bench: `<step>.txt` beside this file; every figure: `results.json`.", ""]
    (out / "report.md").write_text("\n".join(md))
    return [*written, out / "report.md"]


if __name__ == "__main__":
    src = Path(sys.argv[1])
    for p in write_report(orjson.loads(src.read_bytes()), src.parent):
        print(p)
