"""Where a training step's CPU time goes: convolutions vs the fused ops vs the rest.

    python benchmarks/profile_train_step.py [MODEL] [--steps N] [--nchw] [--bf16] [--top N]

Builds ``fitnets_fast.models.build(MODEL)`` (default fitnet1), runs warm-up steps of cross-entropy +
pylearn2 RMSProp + max-norm at batch 128 on random data of the model's input shape (batch and conv weights
channels-last unless ``--nchw``; the forward under bfloat16 autocast with ``--bf16``), then profiles
``--steps`` steps with ``torch.profiler`` and prints each group's share of self CPU time (``--top N``: also
the N ops with the most self time). bfloat16 is only meaningful on CPUs that run bfloat16 convolutions
natively (AVX512-BF16, AMX): elsewhere PyTorch's bfloat16 convolutions take a slow fallback that dwarfs
everything else.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from fitnets_fast import models
from fitnets_fast.optim import MaxNorm, RMSProp, param_groups

GROUPS = (("convolution", ("conv", "mkldnn")), ("fused maxout", ("maxout",)), ("max-pool", ("max_pool",)))


def group_of(op_name: str) -> str:
    for group, needles in GROUPS:
        if any(n in op_name for n in needles):
            return group
    return "everything else (optimizer, max-norm, loss, glue)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="fitnet1")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--nchw", action="store_true",
                        help="NCHW batch and weights (default: channels-last, as the training-step benchmark's fused "
                             "variant and the trainer's channels_last=true)")
    parser.add_argument("--bf16", action="store_true", help="forward under torch.autocast('cpu', torch.bfloat16)")
    parser.add_argument("--top", type=int, default=0, help="also list the N ops with the most self CPU time")
    args = parser.parse_args()
    torch.manual_seed(0)
    layout = torch.contiguous_format if args.nchw else torch.channels_last
    model = models.build(args.model).to(memory_format=layout)
    optimizer = RMSProp(param_groups([(model, 1.0)]), lr=0.005)
    max_norm = MaxNorm([model])
    x = torch.randn(128, *model.input_shape).contiguous(memory_format=layout)
    y = torch.randint(0, model.num_classes, (128,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        max_norm.apply()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict = {}
    for e in events:
        shares[group_of(e.key)] = shares.get(group_of(e.key), 0) + e.self_cpu_time_total
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"{args.model}, batch 128, {precision}, {torch.get_num_threads()} threads, "
          f"{total / args.steps / 1e3:.1f} ms/step")
    for group, t in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {group:50s} {100 * t / total:5.1f}%  {t / args.steps / 1e3:8.1f} ms/step")
    if args.top:
        print(f"top {args.top} ops by self CPU time:")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
            print(f"  {e.key[:60]:60s} {100 * e.self_cpu_time_total / total:5.1f}%  "
                  f"{e.self_cpu_time_total / args.steps / 1e3:7.2f} ms/step  {e.count // args.steps:4d} calls/step")


if __name__ == "__main__":
    main()
