#!/usr/bin/env python3
"""Draws one line chart as a standalone SVG from a CSV of `series,x,y` rows (no plotting
library needed: the standard library only).

    benches/plot.py DATA.csv OUT.svg --title "Puts/s against clients" \
        --x-label clients --y-label "puts/s" [--log-x] [--log-y] [--x-ticks-at-data] [--x-bytes]

Each distinct `series` value is one line, drawn in the order it first appears. Rows whose
`y` is empty or not a number are skipped. `--x-ticks-at-data` puts the x ticks at the data's
x values (e.g. 10k, 100k, 1M keys) instead of powers of two or round steps; `--x-bytes`
labels them as sizes (100 B, 1 KiB, 64 KiB).
"""

import argparse
import csv
import math
import sys
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 40, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def read_series(path):
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                x, y = float(row["x"]), float(row["y"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(x) and math.isfinite(y):
                series.setdefault(row["series"], []).append((x, y))
    for points in series.values():
        points.sort()
    return series


def ticks(low, high, log):
    if log:
        first, last = math.floor(math.log2(low)), math.ceil(math.log2(high))
        step = max(1, (last - first) // 8)
        return [2.0**e for e in range(first, last + 1, step)]
    span = high - low or 1.0
    raw = span / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 2)]


def label(value):
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def byte_label(value):
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def draw(series, title, x_label, y_label, log_x, log_y, x_ticks_at_data=False, x_bytes=False):
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    if not xs:
        sys.exit("no data points")
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = (min(ys), max(ys)) if log_y else (0.0, max(ys) * 1.05 or 1.0)
    x_ticks = sorted(set(xs)) if x_ticks_at_data else ticks(x_lo, x_hi, log_x)
    y_ticks = ticks(y_lo, y_hi, log_y)
    x_text = byte_label if x_bytes else label
    x_lo, x_hi = min(x_ticks[0], x_lo), max(x_ticks[-1], x_hi)
    y_lo, y_hi = min(y_ticks[0], y_lo), max(y_ticks[-1], y_hi)

    def scale(v, lo, hi, log, size):
        if log:
            v, lo, hi = math.log2(v), math.log2(lo), math.log2(hi)
        return (v - lo) / ((hi - lo) or 1.0) * size

    # Long series names widen the picture (about 7 px a character), not squeeze the plot.
    width = WIDTH + max(0, 45 + 7 * max(len(name) for name in series) - RIGHT)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x):
        return LEFT + scale(x, x_lo, x_hi, log_x, plot_w)

    def py(y):
        return TOP + plot_h - scale(y, y_lo, y_hi, log_y, plot_h)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for t in x_ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{x_text(t)}</text>')
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label(t)}</text>')
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">{escape(x_label)}</text>'
    )
    out.append(
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">{escape(y_label)}</text>'
    )
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 10 + i * 20
        lx = LEFT + plot_w + 15
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 26}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--title", default="")
    parser.add_argument("--x-label", default="x")
    parser.add_argument("--y-label", default="y")
    parser.add_argument("--log-x", action="store_true")
    parser.add_argument("--log-y", action="store_true")
    parser.add_argument("--x-ticks-at-data", action="store_true")
    parser.add_argument("--x-bytes", action="store_true")
    args = parser.parse_args()
    svg = draw(
        read_series(args.data), args.title, args.x_label, args.y_label, args.log_x, args.log_y,
        args.x_ticks_at_data, args.x_bytes,
    )
    with open(args.out, "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()
