"""``fitnets-fast``: ``train`` (a preset, with overrides or a resume), ``eval`` (a saved model), ``info``.

Examples::

    fitnets-fast train                                   # the digits preset, seeds 0, 1, 2: mean ± std table
    fitnets-fast train --seed 5                          # one digits run (teacher, backprop, KD, FitNets)
    fitnets-fast train --preset cifar10 --data-dir data --set student=fitnet1 --set max_epochs=100
    fitnets-fast train --resume runs/digits-20260101-120000
    torchrun --nproc_per_node 2 -m fitnets_fast train --preset cifar10 --data-dir data   # 2 processes (DDP)
    torchrun --nproc_per_node 2 --no-python fitnets-fast train --preset cifar10 --data-dir data
    fitnets-fast eval runs/digits-20260101-120000/models/fitnets.pt
    fitnets-fast info
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .config import preset_names

    parser = argparse.ArgumentParser(prog="fitnets-fast", description="FitNets: hints for thin deep nets.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a preset (default: digits) and print the result table")
    t.add_argument("--preset", default="digits", choices=preset_names())
    t.add_argument("--data-dir", default=None, help="folder of the downloaded data sets (not needed for digits)")
    t.add_argument("--out", default=None, help="run folder (default runs/<preset>-<UTC time>)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (JSON value), e.g. --set lr=0.001 --set students='[\"kd\"]'")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=None, help="one run with this seed (default 0)")
    t.add_argument("--seeds", default=None, metavar="LIST",
                   help="one run per seed, e.g. 0,1,2, then mean ± std (digits default: 0,1,2)")
    t.add_argument("--quiet", action="store_true", help="no progress bars (the table is still printed)")
    e = sub.add_parser("eval", help="test accuracy of a saved model file (models/<row>.pt of a run)")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default=None)
    sub.add_parser("info", help="versions, devices, op backends, presets and model names")
    return parser


def _train(args) -> int:
    from . import train
    from .config import parse_overrides
    from .seeds import default_seeds, parse_seeds
    from .distributed import DistributedFailure, is_main_process
    from .run_files import CheckpointError, format_table
    from .trainer import TrainingDiverged, default_out_dir

    if args.resume and (args.overrides or args.out):
        print("error: --resume uses the run's saved settings; drop --set/--out", file=sys.stderr)
        return 2
    if args.resume and (args.seed is not None or args.seeds):
        print("error: --resume uses the run's saved seeds; drop --seed/--seeds", file=sys.stderr)
        return 2
    if args.seed is not None and args.seeds:
        print("error: give --seed (one run) or --seeds (several), not both", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.overrides)
        seeds = parse_seeds(args.seeds) if args.seeds else (
            default_seeds(args.preset) if args.seed is None else None)
        run_dir = args.resume or args.out or default_out_dir(args.preset)
        if args.resume:
            summary = train(resume=args.resume, data_dir=args.data_dir, device=args.device, quiet=args.quiet)
        else:
            one = {} if seeds else {"seed": args.seed or 0}
            summary = train(args.preset, out_dir=run_dir, data_dir=args.data_dir, device=args.device,
                            seeds=seeds, quiet=args.quiet, **one, **overrides)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last checkpoint is intact; continue with "
              f"`fitnets-fast train --resume {run_dir}`", file=sys.stderr)
        return 130
    except DistributedFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        # After a lost peer, gloo's threads can abort the interpreter's shutdown ("terminate called without an
        # active exception", exit status -6, measured in about 1 run in 15): leave now, with status 1. The
        # checkpoint files are complete (atomic writes) and the process group is already closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except (ValueError, TypeError, CheckpointError, TrainingDiverged, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not is_main_process():   # torchrun: rank 0 alone prints the table
        return 0
    if args.quiet:  # train() prints the table itself unless quiet
        print(format_table(summary))
    print(f"run folder: {summary['run_dir']}")
    return 0


def _eval(args) -> int:
    from .run_files import CheckpointError
    from .trainer import evaluate_model_file

    try:
        out = evaluate_model_file(args.checkpoint, data_dir=args.data_dir, device=args.device)
    except (ValueError, TypeError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _info(args) -> int:
    from . import info
    from .config import PRESETS
    from .models import names

    info()
    print("presets:")
    for name, p in PRESETS.items():
        print(f"  {name}: {p.get('description', '')}")
    print("models: " + ", ".join(names()))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return {"train": _train, "eval": _eval, "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
