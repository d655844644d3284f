"""``fitnets-fast``: ``train`` (a preset, with overrides or a resume), ``eval`` (a saved model), ``hints``
(candidate hint/guided layer pairs of two networks), ``info``.

Examples::

    fitnets-fast train                                   # the digits preset: teacher, backprop, KD, FitNets
    fitnets-fast train --preset cifar10 --data-dir data --set student=fitnet1 --set max_epochs=100
    fitnets-fast train --resume runs/digits-20260101-120000
    torchrun --nproc_per_node 2 -m fitnets_fast train --preset cifar10 --data-dir data   # 2 processes (DDP)
    torchrun --nproc_per_node 2 --no-python fitnets-fast train --preset cifar10 --data-dir data
    fitnets-fast eval runs/digits-20260101-120000/models/fitnets.pt
    fitnets-fast hints --teacher resnet56 --student resnet20 --top 5
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
                   help="override a setting (JSON value), e.g. --set lr=0.001 --set methods='[\"kd\"]'")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars (the table is still printed)")
    e = sub.add_parser("eval", help="test accuracy of a saved model file (models/<row>.pt of a run)")
    e.add_argument("checkpoint")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default=None)
    h = sub.add_parser("hints", help="candidate (hint, guided) layer pairs of a teacher and a student, best first")
    h.add_argument("--teacher", required=True, metavar="NAME_OR_FILE", help="a model name or a run's model file")
    h.add_argument("--student", required=True, metavar="NAME_OR_FILE", help="a model name or a run's model file")
    h.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="shape of one input (default: the networks' own)")
    h.add_argument("--top", type=int, default=10, help="number of pairs to list (default 10)")
    sub.add_parser("info", help="versions, devices, op backends, presets and model names")
    return parser


def _train(args) -> int:
    from .config import parse_overrides
    from .distributed import DistributedFailure, is_main_process
    from .run_files import CheckpointError, format_table
    from .trainer import TrainingDiverged, default_out_dir, train

    if args.resume and (args.overrides or args.out):
        print("error: --resume uses the run's saved settings; drop --set/--out", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.overrides)
        run_dir = args.resume or args.out or default_out_dir(args.preset)
        if args.resume:
            summary = train(resume=args.resume, data_dir=args.data_dir, device=args.device, quiet=args.quiet)
        else:
            summary = train(args.preset, out_dir=run_dir, data_dir=args.data_dir, device=args.device,
                            seed=args.seed, quiet=args.quiet, **overrides)
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


def _hints(args) -> int:
    from .hints import format_hints, suggest_hints
    from .run_files import CheckpointError

    try:
        shape = None
        if args.input_shape is not None:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise ValueError(f"--input-shape must be C,H,W (three ints), got {args.input_shape!r}") from None
        pairs = suggest_hints(args.teacher, args.student, shape, top=args.top)
    except (ValueError, TypeError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_hints(pairs))
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
    return {"train": _train, "eval": _eval, "hints": _hints, "info": _info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
