#!/usr/bin/env python3
"""Turns the raw outputs of bench-gateway.sh into a Markdown report and an SVG plot.

Inputs (in the work directory): rb.csv, rb16.csv (redis-benchmark --csv),
hey.txt (hey), wrk-{hot,keys,batch}.txt (wrk --latency).
"""
import argparse
import csv
import math
import os
import re
import subprocess
from datetime import datetime, timezone


def redis_benchmark(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    row = rows[-1]
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {q: to_ms(v, u) for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return rps, lat.get("50", float("nan")), lat.get("99", float("nan")), errors


def hey(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {q: float(v) * 1000 for q, v in re.findall(r"^\s+(50|99)% in ([\d.]+) secs", text, re.M)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    errors = sum(n for c, n in codes.items() if c != 200)
    return rps, lat.get("50", float("nan")), lat.get("99", float("nan")), errors


def svg_plot(rows, out):
    """Two horizontal bar panels: throughput (log scale) and p99 latency."""
    width, bar_h, gap, left = 900, 22, 10, 260
    top = 50
    height = top + len(rows) * (bar_h + gap) + 60
    panel_w = (width - left - 40) // 2
    max_ops = max(r[1] for r in rows)
    max_p99 = max(r[3] for r in rows if not math.isnan(r[3]))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">operations/s (log scale)</text>',
        f'<text x="{left + panel_w + 30}" y="20" font-size="14" font-weight="bold">p99 latency (ms)</text>',
    ]
    for i, (name, ops, _p50, p99, ref) in enumerate(rows):
        y = top + i * (bar_h + gap)
        color = "#888" if ref else "#2b6cb0"
        w_ops = panel_w * math.log10(max(ops, 1)) / math.log10(max_ops * 1.2)
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{name}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w_ops:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w_ops + 4:.1f}" y="{y + 15}">{ops:,.0f}</text>')
        if not math.isnan(p99):
            w_lat = (panel_w - 60) * p99 / max_p99
            x0 = left + panel_w + 30
            parts.append(f'<rect x="{x0}" y="{y}" width="{w_lat:.1f}" height="{bar_h}" fill="{"#888" if ref else "#c05621"}"/>')
            parts.append(f'<text x="{x0 + w_lat + 4:.1f}" y="{y + 15}">{p99:.2f}</text>')
    parts.append(f'<text x="{left}" y="{height - 20}" fill="#555">grey: redis-benchmark against the same Redis, same run</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--rss", action="append", default=[])
    ap.add_argument("--threads", default="")
    ap.add_argument("--seconds", default="?")
    ap.add_argument("--hot-value", default="?")
    a = ap.parse_args()
    w = lambda name: os.path.join(a.work, name)

    rb = redis_benchmark(w("rb.csv"))
    rb16 = redis_benchmark(w("rb16.csv"))
    seed = hey(w("hey.txt"))
    hot = wrk(w("wrk-hot.txt"))
    keys = wrk(w("wrk-keys.txt"))
    batch = wrk(w("wrk-batch.txt"))

    def row(name, r, ref_rps, ref_name, ops_per_request=1):
        ops = r[0] * ops_per_request
        return f"| {name} | {r[0]:,.0f} | {ops:,.0f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]} | {ops / ref_rps:.2f} × {ref_name} |"

    hot_total = int(re.search(r"(\d+) requests in", open(w("wrk-hot.txt")).read()).group(1))
    floor_ok = seed[0] >= 8000 and seed[2] < 30
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    md = f"""# tally gateway benchmark — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}

Machine: {os.cpu_count()} cores; load generator, gateway, counter and Redis all on it. {a.seconds}s per wrk run,
100 connections. Worker threads: {a.threads}. Redis {redis_version.replace("v=", "")} (no persistence).

## Redis ceiling (same Redis, same run)

| redis-benchmark | ops/s | p50 ms | p99 ms |
|---|---|---|---|
| `-t incr -c 100` | {rb[0]:,.0f} | {rb[1]:.3f} | {rb[2]:.3f} |
| `-t incr -c 100 -P 16` | {rb16[0]:,.0f} | {rb16[1]:.3f} | {rb16[2]:.3f} |

## HTTP → tally-gateway → tally-counter → Redis (sync writes)

| scenario | requests/s | counter ops/s | p50 ms | p99 ms | errors | vs Redis |
|---|---|---|---|---|---|---|
{row("seed: `hey -n 10000 -c 100` one key", seed, rb[0], "`-c 100`")}
{row("wrk, one hot key", hot, rb[0], "`-c 100`")}
{row("wrk, 100k keys", keys, rb[0], "`-c 100`")}
{row("wrk, batch-increment ×100", batch, rb16[0], "`-P 16`", 100)}

Seed floor (≥ 8,000 req/s, p99 < 30 ms on the seed's command): **{"met" if floor_ok else "NOT met"}**.
Hot counter after the run: {a.hot_value}; wrk counted {hot_total:,} completed hot-key requests (the counter may be
higher by the requests still in flight when wrk stopped; it can never be lower).

## Memory (peak RSS)

| process | MiB |
|---|---|
""" + "\n".join(f"| {k} | {v} |" for k, v in (x.split("=", 1) for x in a.rss)) + "\n\n![plot](" + os.path.basename(a.out) + ".svg)\n"
    with open(a.out + ".md", "w") as f:
        f.write(md)
    svg_plot(
        [
            ("redis-benchmark -c 100", rb[0], rb[1], rb[2], True),
            ("redis-benchmark -P 16", rb16[0], rb16[1], rb16[2], True),
            ("hey seed (one key)", seed[0], seed[1], seed[2], False),
            ("wrk hot key", hot[0], hot[1], hot[2], False),
            ("wrk 100k keys", keys[0], keys[1], keys[2], False),
            ("wrk batch ×100 (ops)", batch[0] * 100, batch[1], batch[2], False),
        ],
        a.out + ".svg",
    )


if __name__ == "__main__":
    main()
