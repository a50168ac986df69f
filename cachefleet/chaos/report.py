"""Chaos reports: result.json (every figure), report.md (a table to read in ten seconds) and a
timeline picture per trial (SVG: one lane per shard, ok/error over time, faults and failovers).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from cachefleet.chaos.checker import Op

BUCKET_S = 0.1
LANE_H = 28
LEFT = 90
WIDTH = 900


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, default=str))


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    agg = result["aggregate"]
    other = agg.get("other_shards", {})
    lines = [
        f"# chaos: {result['scenario']} — {'PASSED' if result['passed'] else 'FAILED'}",
        "",
        f"Topology `{result['topology']}`, {len(result['trials'])} trial(s), seed "
        f"{result['seed']}, workload: {result['workload_text']}.",
        "",
        *([f"**Stopped {result['stopped']}**", ""] if result.get("stopped") else []),
        "| figure | p50 | p99 | max |",
        "|---|---|---|---|",
        f"| unavailability of affected shards (s) | {_fmt(agg['failover_p50_s'])} | "
        f"{_fmt(agg['failover_p99_s'])} | {_fmt(agg['failover_max_s'])} |",
        f"| split-brain window (s) | | | {_fmt(agg['split_brain_max_s'])} |",
        f"| longest time without an acknowledged write, shards no fault hit (s) | "
        f"{_fmt(other.get('max_gap_p50_s'))} | {_fmt(other.get('max_gap_p99_s'))} | "
        f"{_fmt(other.get('max_gap_max_s'))} |",
        "",
        f"Shards no fault hit: {other.get('shard_trials', 0)} shard-trials, "
        f"{other.get('ok_writes', 0)} acknowledged and {other.get('failed_writes', 0)} failed "
        "writes after the first fault.",
        "",
        f"Lost acknowledged writes: **{agg['lost_writes']}** "
        f"(in {agg['trials_with_loss']} of {len(result['trials'])} trials). "
        f"Stale reads: {agg['stale_reads']}. Operations: {agg['ops']} "
        f"({agg['indeterminate']} indeterminate).",
        "",
        "| trial | faults | affected shards: unavailable (s) | other shards: longest gap (s) "
        "| lost | split brain (s) | stale |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        faults = "; ".join(f"t={f['t']:.1f}s {f['what']}" for f in t["faults"]) or "—"
        unav = ", ".join(
            f"{s}: {_fmt(v['window_s'])}" for s, v in t["availability"].items() if v["affected"]
        )
        gaps = ", ".join(
            f"{s}: {_fmt(v['max_gap_s'])}"
            for s, v in t["availability"].items()
            if not v.get("targeted", False)
        )
        lines.append(
            f"| {t['trial']} | {faults} | {unav or '—'} | {gaps or '—'} | {t['lost_writes']} | "
            f"{_fmt(t['split_brain_max_s'])} | {t['stale_reads']} |"
        )
    if result.get("expect"):
        lines += ["", "Expectations:"]
        for name, check in result["expect"].items():
            mark = "ok" if check["met"] else "NOT MET"
            lines.append(
                f"- {name}: expected ≤ {check['limit']}, got {_fmt(check['got'])} — {mark}"
            )
    lines += ["", "Timelines: " + ", ".join(f"`{t['timeline']}`" for t in result["trials"]), ""]
    path.write_text("\n".join(lines))


def write_timeline(
    path: Path,
    *,
    title: str,
    duration_s: float,
    shards: list[int],
    shard_of: dict[str, int],
    history: list[Op],
    faults: list[dict[str, Any]],
    failovers: list[dict[str, Any]],
) -> None:
    """SVG: per shard a lane of 100 ms buckets — green all ok, red any failure, grey idle."""
    buckets = int(duration_s / BUCKET_S) + 1
    scale = (WIDTH - LEFT - 20) / max(duration_s, 0.1)
    height = 50 + LANE_H * len(shards) + 40
    state: dict[tuple[int, int], str] = {}
    for op in history:
        if op.kind != "w":
            continue
        shard = shard_of.get(op.key)
        if shard is None:
            continue
        b = min(buckets - 1, max(0, int(op.end / BUCKET_S)))
        prev = state.get((shard, b))
        state[(shard, b)] = "bad" if op.outcome != "ok" or prev == "bad" else "ok"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="18" font-size="13">{escape(title)}</text>',
    ]
    colours = {"ok": "#3a3", "bad": "#d33"}
    for i, shard in enumerate(shards):
        y = 40 + i * LANE_H
        parts.append(f'<text x="10" y="{y + 16}">shard {shard}</text>')
        parts.append(
            f'<rect x="{LEFT}" y="{y}" width="{WIDTH - LEFT - 20}" height="{LANE_H - 6}" '
            'fill="#eee"/>'
        )
        for b in range(buckets):
            s = state.get((shard, b))
            if s:
                x = LEFT + b * BUCKET_S * scale
                w = max(1.0, BUCKET_S * scale)
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{LANE_H - 6}" '
                    f'fill="{colours[s]}"/>'
                )
    bottom = 40 + LANE_H * len(shards)
    for f in faults:
        x = LEFT + f["t"] * scale
        parts.append(f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{bottom}" stroke="black"/>')
        parts.append(f'<text x="{x + 2:.1f}" y="{bottom + 14}">{escape(f["what"])}</text>')
    for fo in failovers:
        x = LEFT + fo["t"] * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="30" x2="{x:.1f}" y2="{bottom}" stroke="#36c" '
            'stroke-dasharray="4 2"/>'
        )
        parts.append(
            f'<text x="{x + 2:.1f}" y="{bottom + 28}" fill="#36c">{escape(str(fo["what"]))}</text>'
        )
    for t in range(int(duration_s) + 1):
        x = LEFT + t * scale
        parts.append(f'<text x="{x:.1f}" y="36" fill="#888">{t}s</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))
