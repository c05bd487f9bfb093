"""Per-step host work: what timebudget's loop runs per training step beyond the plain loop, op by op.

Runs the plain loop of ``throughput.py`` and ``timebudget.train`` (``strategy: full``) on the same case under
``torch.profiler`` and divides every operator's calls and self CPU time by the number of optimizer steps (each loop
calls ``optimizer.step`` once per step; the few calibration and evaluation steps of timebudget are a small share of a
run of seconds). On CUDA it also counts kernel launches (``cudaLaunchKernel``) and event records per step: on a fast
GPU each one is host time that the device may wait for. The table lists the operators whose per-step host time
differ most between the two (in calls per step, which load does not blur, or in host time), then the totals.

    python benchmarks/step_profile.py                                  # digits, cnn, CPU, 8 s each
    python benchmarks/step_profile.py --device cuda --model resnet18 --data cifar-shaped --precision bf16
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Case, cifar_shaped, plain_loop  # noqa: E402

from timebudget import data, models  # noqa: E402
from timebudget.config import Config  # noqa: E402
from timebudget.trainer import train  # noqa: E402

STEP_MARK = "Optimizer.step#SGD.step"


def per_step(prof: profile) -> tuple[dict[str, tuple[float, float]], int]:
    """Operator name -> (calls per step, self CPU microseconds per step), and the number of steps."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for event in prof.key_averages():
        totals[event.key][0] += event.count
        totals[event.key][1] += event.self_cpu_time_total
    steps = int(totals[STEP_MARK][0]) if STEP_MARK in totals else 0
    if not steps:
        raise SystemExit(f"no {STEP_MARK!r} events: is the optimizer SGD?")
    return {key: (calls / steps, cpu / steps) for key, (calls, cpu) in totals.items()}, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data", default="digits", help="digits, cifar-shaped, or any --data of timebudget")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=8.0, help="training seconds of each loop")
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--sort", choices=("calls", "time"), default="calls",
                        help="list by the difference in calls per step (steady under load) or in host time per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        spec = cifar_shaped(Path(tmp) / "cifar.npz") if args.data == "cifar-shaped" else args.data
        case = Case(args.data, spec, args.model, args.device, args.precision, args.batch_size)
        bundle = data.load(spec)
        model = models.build(case.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
        with profile(activities=activities) as plain_prof:
            plain_loop(bundle.train.x, bundle.train.y, model, case, 0.1, args.seconds, "same")
        config = Config(seconds=args.seconds + 6, data=spec, strategy="full", quiet=True, out=str(Path(tmp) / "run"),
                        **case.config())
        with profile(activities=activities) as tb_prof:
            train(config)
    plain, plain_steps = per_step(plain_prof)
    ours, our_steps = per_step(tb_prof)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"steps profiled: plain {plain_steps}, timebudget {our_steps} (timebudget's include calibration's)")
    print(f"\n{'operator':<48}{'plain calls':>12}{'tb calls':>10}{'plain us':>10}{'tb us':>10}{'diff us':>10}")
    column = 0 if args.sort == "calls" else 1
    keys = sorted(set(plain) | set(ours),
                  key=lambda k: -abs(ours.get(k, (0, 0))[column] - plain.get(k, (0, 0))[column]))
    for key in keys[:args.top]:
        (pc, pt), (oc, ot) = plain.get(key, (0.0, 0.0)), ours.get(key, (0.0, 0.0))
        print(f"{key[:47]:<48}{pc:>12.2f}{oc:>10.2f}{pt:>10.1f}{ot:>10.1f}{ot - pt:>+10.1f}")
    for label, pick in (("all operators", lambda k: True), ("aten:: operators", lambda k: k.startswith("aten::")),
                        ("kernel launches", lambda k: k in ("cudaLaunchKernel", "cuLaunchKernel")),
                        ("event records", lambda k: k == "cudaEventRecord")):
        pc, pt = (sum(v[i] for k, v in plain.items() if pick(k)) for i in (0, 1))
        oc, ot = (sum(v[i] for k, v in ours.items() if pick(k)) for i in (0, 1))
        if pc or oc:
            print(f"{'total: ' + label:<48}{pc:>12.2f}{oc:>10.2f}{pt:>10.1f}{ot:>10.1f}{ot - pt:>+10.1f}")


if __name__ == "__main__":
    main()
