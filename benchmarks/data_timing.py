"""Time loading + preprocessing the full CIFAR-10 with fitnets_fast.data.prepare: first run (empty cache, so GCN +
ZCA are fitted and applied) and second run (the same call, served from the cache).

    python benchmarks/data_timing.py CIFAR_DIR [--validation|--all] [--repeats K]

CIFAR_DIR holds cifar-10-batches-py/ (the standard CIFAR-10 python layout). Each repeat
uses a fresh temporary cache folder (deleted afterwards). Prints one line per run and the medians; every run is a
fresh `prepare` call in this process. Besides wall time it prints the process CPU time (user + system, all
threads) and the 1-minute load average before the run, because on a shared machine other jobs stretch the wall
time: with 2 cores, CPU time / 2 is roughly what an idle machine's wall time would be.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

from fitnets_fast.data import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--all", dest="validation", action="store_false", help="no validation split (fit on 50K)")
    ap.add_argument("--validation", dest="validation", action="store_true", help="40K/10K split (default)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.set_defaults(validation=True)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, validation={args.validation}")
    first, second = [], []
    for r in range(args.repeats):
        folder = tempfile.mkdtemp(prefix="fitnets_cache_")
        try:
            for label, times in (("first (uncached)", first), ("second (cached)", second)):
                loadavg = os.getloadavg()[0]
                t0, c0 = time.perf_counter(), time.process_time()
                p = prepare("cifar10", args.root, validation=args.validation, cache_dir=folder)
                times.append(time.perf_counter() - t0)
                cpu = time.process_time() - c0
                print(f"repeat {r} {label}: wall {times[-1]:.2f} s, CPU {cpu:.2f} s, load average before "
                      f"{loadavg:.2f}, from_cache={p.from_cache}; {p.describe}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"median first run {statistics.median(first):.2f} s, median cached run {statistics.median(second):.2f} s "
          f"over {args.repeats} repeat(s)")


if __name__ == "__main__":
    main()
