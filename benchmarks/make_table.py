"""Turn a pytest-benchmark JSON of ``benchmarks/test_bench_*.py`` into Markdown tables.

    pytest benchmarks/ --benchmark-only --benchmark-json bench.json
    python benchmarks/make_table.py bench.json [--machine 2core-xeon]

Writes ``benchmarks/results/cpu-<machine>.md`` (every variant's median with min-max, and the ratios) and
replaces the CPU section of ``benchmarks/README.md`` (between the ``cpu-table`` markers) with the ratio
table. Ratios are speed-ups of the fused C++ variant: ``reference / fused`` etc. (> 1: fused is faster).
Training steps that were also timed under bfloat16 autocast (``*-bf16`` variants) get a second table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- cpu-table:start -->", "<!-- cpu-table:end -->"
# The project's CPU targets for fwd+bwd speed-ups of the fused float32 variant
# (op, shape or None = every shape, baseline, x).
TARGETS = [
    ("maxout", None, "reference", 5.0), ("maxout", None, "compiled", 1.5),
    ("kd_loss", "1024x1000", "reference", 5.0), ("kd_loss", "4096x32000", "reference", 5.0),
    ("kd_loss", "128x10", "reference", 2.0), ("kd_loss", None, "compiled", 1.0),
    ("hint_loss", None, "reference", 1.5),
    ("train_step", "fitnet1", "reference", 1.8), ("train_step", "fitnet1", "compiled", 1.2),
    ("train_step", "fitnet4", "reference", 1.8), ("train_step", "fitnet4", "compiled", 1.2),
]
# Baselines of the bfloat16-autocast training step (fused-bf16 / baseline), with their column titles.
BF16_BASELINES = [("reference", "x eager fp32"), ("compiled", "x torch.compile fp32"),
                  ("reference-bf16", "x eager bf16"), ("compiled-bf16", "x torch.compile bf16"),
                  ("fused", "x fused fp32")]


def load(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def rows(data: Dict) -> List[Dict]:
    out = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "variants" in info:
            out.append(info)
    return out


def _ms(v: Dict) -> str:
    return f"{v['median_ms']:.3g} ({v['min_ms']:.3g}-{v['max_ms']:.3g})"


def _ratio(info: Dict, baseline: str, fused: str = "fused") -> float:
    variants = info["variants"]
    return variants[baseline]["median_ms"] / variants[fused]["median_ms"]


def _roofline(info: Dict) -> str:
    """Fused fwd(+bwd) byte rate as % of the copy_ roofline (maxout only)."""
    if "copy" not in info["variants"]:
        return ""
    bw = info["copy_bytes"] / (info["variants"]["copy"]["median_ms"] * 1e-3)
    ideal = info["min_bytes"] / bw
    return f"{100 * ideal / (info['variants']['fused']['median_ms'] * 1e-3):.0f}%"


def ratio_table(infos: List[Dict]) -> str:
    lines = ["| op | shape | mode | fused ms | x eager reference | x eager amax | x torch.compile "
             "| fused % of copy roofline |", "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        v = info["variants"]
        amax = f"{_ratio(info, 'amax'):.2f}" if "amax" in v else ""
        lines.append(f"| {info['op']} | {info['shape']} | {info['mode']} | {v['fused']['median_ms']:.3g} "
                     f"| {_ratio(info, 'reference'):.2f} | {amax} | {_ratio(info, 'compiled'):.2f} "
                     f"| {_roofline(info)} |")
    return "\n".join(lines)


def bf16_table(infos: List[Dict]) -> str:
    """Speed-ups of the fused step under bfloat16 autocast, for the rows that timed one ("" if none)."""
    mixed = [info for info in infos if "fused-bf16" in info["variants"]]
    if not mixed:
        return ""
    lines = ["| op | shape | fused-bf16 ms | " + " | ".join(title for _, title in BF16_BASELINES) + " |",
             "|---|---|---|" + "---|" * len(BF16_BASELINES)]
    for info in mixed:
        cells = [f"{_ratio(info, name, 'fused-bf16'):.2f}" if name in info["variants"] else ""
                 for name, _ in BF16_BASELINES]
        lines.append(f"| {info['op']} | {info['shape']} | {info['variants']['fused-bf16']['median_ms']:.3g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def variant_table(infos: List[Dict]) -> str:
    names = []
    for info in infos:
        names += [n for n in info["variants"] if n not in names]
    lines = ["| op | shape | mode | " + " | ".join(f"{n} ms median (min-max)" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for info in infos:
        cells = [_ms(info["variants"][n]) if n in info["variants"] else "" for n in names]
        lines.append(f"| {info['op']} | {info['shape']} | {info['mode']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(infos: List[Dict]) -> str:
    lines = []
    for op, shape, baseline, goal in TARGETS:
        for info in infos:
            if info["op"] != op or (shape and info["shape"] != shape) or info["mode"] == "fwd":
                continue
            if baseline not in info["variants"]:
                continue
            r = _ratio(info, baseline)
            verdict = "met" if r >= goal else "MISSED"
            lines.append(f"- {op} {info['shape']} {info['mode']}: fused is {r:.2f}x {baseline} "
                         f"(target >= {goal}x): {verdict}")
    return "\n".join(lines)


def host_table(infos: List[Dict]) -> str:
    """Host time per call of the Triton ops with launches stubbed, beside eager ops ("" if not timed)."""
    hosts = [info for info in infos if info["op"] == "host_overhead"]
    if not hosts:
        return ""
    lines = ["| call | us per call (median) | x eager conv2d |", "|---|---|---|"]
    for info in hosts:
        v, calls = info["variants"], info["calls_per_sample"]
        eager = v["eager conv2d"]["median_ms"]
        for name, t in v.items():
            lines.append(f"| {name} | {1e3 * t['median_ms'] / calls:.1f} | {t['median_ms'] / eager:.2f} |")
    return "\n".join(lines)


def header(data: Dict, infos: List[Dict], machine: str) -> str:
    mi = data.get("machine_info", {})
    allocator = sorted({i["allocator"] for i in infos})
    threads = sorted({i["threads"] for i in infos})
    return (f"Machine: **{machine}** ({mi.get('cpu', {}).get('brand_raw', platform.processor())}, "
            f"{mi.get('cpu', {}).get('count', '?')} logical CPUs), torch threads {threads}, "
            f"allocator: {', '.join(allocator)}, date {data.get('datetime', '?')}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--machine", default="2core-xeon", help="name used in the results file name")
    parser.add_argument("--command", default="pytest benchmarks/ --benchmark-only --benchmark-json bench.json",
                        help="the command that produced the JSON (recorded in the results)")
    args = parser.parse_args()
    data = load(args.json)
    everything = rows(data)
    infos = [info for info in everything if "fused" in info["variants"]]
    head = header(data, everything, args.machine)
    ratios = ratio_table(infos)
    mixed = bf16_table(infos)
    if mixed:
        ratios += ("\n\nUnder bfloat16 autocast (the trainer's `amp=\"bf16\"`), the fused training step against "
                   "each baseline:\n\n" + mixed)
    host = host_table(everything)
    if host:
        ratios += ("\n\nHost time of one call through the Triton ops' dispatch and autograd, the kernel launch "
                   "stubbed out (tiny CPU tensors), beside eager PyTorch ops:\n\n" + host)
    results = os.path.join(HERE, "results", f"cpu-{args.machine}.md")
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "w") as f:
        f.write(f"# CPU kernel benchmarks on {args.machine}\n\n{head}\n\nCommand: `{args.command}`\n\n"
                f"Variants are interleaved (each round runs every variant once); medians over rounds.\n\n"
                f"## Speed-ups of the fused kernels\n\n{ratios}\n\n## Targets\n\n"
                f"{target_lines(infos)}\n\n## All variants\n\n{variant_table(infos)}\n")
    readme = os.path.join(HERE, "README.md")
    text = open(readme).read() if os.path.exists(readme) else "# Benchmarks\n\n"
    section = (f"{START}\n## CPU kernels ({args.machine})\n\n{head}\n\nCommand: `{args.command}`; "
               f"details in `results/cpu-{args.machine}.md`.\n\n{ratios}\n{END}")
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(readme, "w") as f:
        f.write(text)
    print(f"wrote {results} and {readme}")


if __name__ == "__main__":
    main()
