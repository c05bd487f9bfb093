"""The ``timebudget`` command. Bad input gets one line on stderr and a non-zero exit, never a traceback.

Precedence of settings: built-in defaults, then ``--config FILE``, then the named flags, then each ``--set key=value``.
The budget counts from this process's start, so interpreter start-up and the torch import are inside it.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Any, NoReturn, Sequence

from .clock import process_start_time
from .errors import BudgetTooSmall, PeerLost, TimebudgetError, first_line
from .preemption import Interrupted, stop_watching, watch_early

_PROCESS_START = process_start_time()

EXIT_BAD_INPUT = 2
EXIT_BUDGET_TOO_SMALL = 3
EXIT_INTERRUPTED = 4  # a stop signal: the run is saved and can be continued with --resume
EXIT_DIVERGED = 5  # the loss diverged after rollbacks: the last good state is saved
EXIT_FAILED = 1

# flag -> config key, for the named flags that are shortcuts of --set
_FLAG_KEYS = {
    "data": "data",
    "data_dir": "data_dir",
    "model": "model",
    "out": "out",
    "seed": "seed",
    "device": "device",
    "strategy": "strategy",
    "schedule": "schedule",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "weight_decay": "weight_decay",
    "warmup": "warmup",
    "keep_fraction": "keep_fraction",
    "checkpoint_every": "checkpoint_every",
}
# store_true flags that set the config field of the same name
_SWITCHES = ("quiet", "filter_noisy", "explain", "report", "tensorboard")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="timebudget", description="Train a PyTorch model for a fixed wall-clock budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.set_defaults(only_run=False)  # set by ``main`` for a command-line process, which ends with its run
    t = sub.add_parser(
        "train",
        help="train until the deadline; final evaluation and checkpoint are on disk when it returns",
        description="Train for --seconds of wall time from process start to the last artifact written. The learning "
        "rate decays with the fraction of the budget used (linear to zero at the deadline by default), and the "
        "final evaluation, checkpoint.pt, scores.pt and summary.json are written before the deadline.",
    )
    t.add_argument("--seconds", metavar="S", help="the budget in seconds (required, > 0; with --resume: default what "
                   "the interrupted run left of its budget)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in its folder, with its own "
                   "settings (only --seconds and --quiet may be given with it)")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=float, metavar="SECONDS",
                   help="write the resumable checkpoint.pt every SECONDS (0: only at the end; default: off below "
                   "600 s, else every 10%% of the budget)")
    t.add_argument("--config", metavar="FILE", help="YAML config (see configs/); flags and --set override it")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, repeatable (e.g. --set lr=0.05 --set warmup=0.02)")
    t.add_argument("--data", help="digits (default), cifar10, cifar100, mnist, fashion-mnist, imagefolder, synthetic, "
                   "a path to an .npz (x_train, y_train, x_test, y_test), or module:function")
    t.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                   help="folder of the data set (cifar, mnist, imagefolder)")
    t.add_argument("--model", help="cnn (default for images), mlp (default for tabular), resnet18, airnet, or "
                   "module:function")
    t.add_argument("--out", metavar="DIR", help="run folder (default: a new folder under runs/)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--device", help="auto (default), cpu or cuda")
    t.add_argument("--strategy",
                   help="sample selection: infobatch (default), full, random, hard, curriculum, selective, "
                   "importance, selective-backprop")
    t.add_argument("--schedule",
                   help="learning-rate schedule by budget fraction: linear (default), cosine, step, constant")
    t.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (default from the data size)")
    t.add_argument("--lr", type=float, help="peak learning rate (default from optimizer, batch size and a range test)")
    t.add_argument("--optimizer", help="sgd (default for images) or adamw (default for tabular)")
    t.add_argument("--weight-decay", dest="weight_decay", type=float, help="weight decay")
    t.add_argument("--warmup", type=float,
                   help="warm-up as a fraction of the training window (default: 5%%, or 20 steps if longer, at most "
                        "15%%)")
    t.add_argument("--keep-fraction", dest="keep_fraction", type=float,
                   help="fixed share of the data a selection strategy keeps per epoch, in (0, 1] "
                   "(default: budget-sized)")
    t.add_argument("--filter-noisy", dest="filter_noisy", action="store_true",
                   help="always leave out probably mislabelled samples (classification only); the default, "
                   "filter_noisy=auto, does so only once the run's losses look noisy; --set filter_noisy=false: never")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no closing line")
    t.add_argument("--explain", action="store_true", help="after the deadline, run `timebudget explain` on the run "
                   "folder with its defaults; this runs outside the budget (same as --set explain=true)")
    t.add_argument("--report", action="store_true", help="after the deadline, draw RUN_DIR/report.png (`timebudget "
                   "report`); outside the budget (same as --set report=true)")
    t.add_argument("--tensorboard", action="store_true", help="also write metrics.jsonl's scalars for TensorBoard to "
                   "RUN_DIR/tensorboard/, inside the budget (needs pip install -e \".[tensorboard]\")")
    _add_explain_parser(sub)
    _add_report_parser(sub)
    from .federated import launcher  # no flwr import: the command is listed, and refused in one line without it

    launcher.add_parser(sub)
    return parser


def _add_explain_parser(sub: Any) -> None:
    e = sub.add_parser(
        "explain",
        help="Captum attributions of a finished run: what it learnt and what its score table found important",
        description="Integrated Gradients for a few test samples per class and for the training samples with the "
        "highest (kept) and lowest (dropped) scores: PNG figures and explain.json. Runs after training, outside "
        "any budget, and prints how long it took.",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by timebudget train")
    e.add_argument("--samples", type=int, default=4, metavar="N", help="samples per group (class, kept, dropped)")
    e.add_argument("--n-steps", dest="n_steps", type=int, default=50, help="Integrated Gradients steps (default 50)")
    e.add_argument("--baseline", default="zeros", choices=("zeros", "blur", "mean"),
                   help="reference input: zeros (the data mean after standardisation), blur (images), mean input")
    e.add_argument("--internal-batch-size", dest="internal_batch_size", type=int, metavar="N",
                   help="most inputs per forward pass, to bound memory (default: all at once)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    e.add_argument("--target", default="true", choices=("true", "pred"),
                   help="attribute the true class (default) or the predicted one")
    e.add_argument("--classes", type=int, nargs="+", metavar="K", help="class indices to analyse (default all)")
    e.add_argument("--output", type=int, default=0, metavar="K", help="regression output to attribute (default 0)")
    e.add_argument("--tracin", action="store_true", help="also TracInCPFast self-influence from the run's checkpoints "
                   "and its rank correlation with the loss scores")
    e.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/explain)")


def _add_report_parser(sub: Any) -> None:
    r = sub.add_parser(
        "report",
        help="plots of a run (or several compared): lr, loss, kept fraction, step time, test metrics, phases",
        description="One PNG of how a run spent its budget, against wall-clock seconds: learning rate, training loss, "
        "kept fraction per epoch, step time with load events, periodic and final test metrics, with the phases "
        "(start-up, calibration, training, tail) shaded and the deadline marked. Several RUN_DIRs are drawn on the "
        "same axes, labelled by strategy and seed. An unfinished run is drawn from what it left.",
    )
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders made by timebudget train")
    r.add_argument("--out", metavar="PNG", help="output image (default RUN_DIR/report.png; for several runs, "
                   "report.png in the current folder)")


def config_from_args(args: argparse.Namespace) -> Any:
    from . import config as config_module

    if args.resume is not None:
        return _resume_config(args)
    if args.seconds is None:
        raise TimebudgetError("--seconds is required: the wall-clock budget in seconds, e.g. --seconds 60")
    overrides: dict[str, Any] = {}
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    for switch in _SWITCHES:
        if getattr(args, switch):
            overrides[switch] = True
    overrides["seconds"] = config_module.check_seconds(args.seconds)
    for item in args.set:
        key, value = config_module.parse_override(item)
        overrides[key] = value
    base = config_module.apply(config_module.load_yaml(args.config)) if args.config else config_module.Config()
    return config_module.apply(overrides, base, source="--set").validate()


def _resume_config(args: argparse.Namespace) -> Any:
    """``--resume RUN_DIR``: the run's own settings; only the budget and --quiet are the caller's."""
    from . import config as config_module

    given = [f"--{flag.replace('_', '-')}" for flag in (*_FLAG_KEYS, "config") if getattr(args, flag) is not None]
    given += [f"--{switch.replace('_', '-')}" for switch in _SWITCHES if switch != "quiet" and getattr(args, switch)]
    given += ["--set"] if args.set else []
    if given:
        raise TimebudgetError(f"--resume continues a run with its own settings; drop {', '.join(given)} (only "
                              "--seconds and --quiet may be given)")
    seconds = None if args.seconds is None else config_module.check_seconds(args.seconds)
    return config_module.Config(seconds=seconds, resume=args.resume, quiet=args.quiet).validate()


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from .distributed import launch_start
    from .trainer import train

    if args.only_run:
        # this process trains once and ends at once (``main``): freezing what exists now leaves Python's collector
        # only the run's objects to walk, as ``train`` would, and spares ``train`` collecting them when it ends (70
        # ms after a process's first run, past its last artifact) so that a next run's freeze does not keep them
        gc.freeze()
    result = train(config, start=launch_start(_PROCESS_START))  # under torchrun: from torchrun's own start
    stop_watching()
    s = result.summary
    if s["status"] == "interrupted":
        launch = f" under torchrun with {s['world_size']} processes" if s.get("world_size", 1) > 1 else ""
        if result.is_writer:  # under torchrun: one line, rank 0's
            print(f"timebudget: interrupted by {s['signal']} at step {s['steps']}; saved in {result.out_dir}; continue "
                  f"with: timebudget train --resume {result.out_dir}{launch}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if s["status"] == "diverged" and not result.is_writer:
        return EXIT_DIVERGED
    if s["status"] == "diverged":
        why = (f"the loss diverged: rolling back to the last good state with a lower learning rate did not help "
               f"({len(s['rollbacks'])} rollbacks); that state is saved in {result.out_dir}; try a lower --lr"
               if s["rollbacks"] else f"the final test metrics are not finite ({s['test_metrics']}); the run is saved "
               f"in {result.out_dir}")
        print(f"timebudget: error: {why}", file=sys.stderr)
        return EXIT_DIVERGED
    if not result.config.quiet:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in s["test_metrics"].items())
        print(f"timebudget: {metrics}; {s['steps']} steps, {s['epochs']} epochs, {s['samples_per_s']:.0f} samples/s; "
              f"artifacts in {result.out_dir} after {s['elapsed_s']:.2f} of {s['budget_s']:g} s")
    if config.explain and result.is_writer:  # after the deadline: the run folder is complete, the budget is over
        from . import explain

        explain.run(result.out_dir, explain.Options(device=config.device, quiet=config.quiet))
    if config.report and result.is_writer:  # after the deadline, like --explain
        from . import report

        report.write([result.out_dir], quiet=config.quiet)
    return 0


def _explain(args: argparse.Namespace) -> int:
    from . import explain

    options = explain.Options(samples=args.samples, n_steps=args.n_steps, baseline=args.baseline,
                              internal_batch_size=args.internal_batch_size, device=args.device, target=args.target,
                              output=args.output, classes=args.classes, tracin=args.tracin, out=args.out)
    explain.run(args.run_dir, options)
    return 0


def _federated(args: argparse.Namespace) -> int:
    from .federated import launcher

    return launcher.main(args)


def _report(args: argparse.Namespace) -> int:
    from . import report

    report.write(args.run_dirs, args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if argv is None and args.command == "train":  # before torch is imported: a signal in start-up ends it at once
            watch_early()
            args.only_run = True  # the process ends with this run (``os._exit`` below)
        code = {"explain": _explain, "report": _report, "federated": _federated}.get(args.command, _train)(args)
    except Interrupted as exc:
        print(f"timebudget: {exc}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BudgetTooSmall as exc:
        print(f"timebudget: error: {exc}", file=sys.stderr)
        code = EXIT_BUDGET_TOO_SMALL
    except TimebudgetError as exc:
        print(f"timebudget: error: {exc}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except PeerLost as exc:
        print(f"timebudget: error: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        print("timebudget: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a failure inside torch or user code: one line, the traceback on request
        if os.environ.get("TIMEBUDGET_DEBUG"):
            raise
        print(f"timebudget: error: {type(exc).__name__}: {first_line(exc)} (set TIMEBUDGET_DEBUG=1 for the traceback)",
              file=sys.stderr)
        code = EXIT_FAILED
    if argv is None:
        # A command-line run ends the moment its artifacts are on disk: skip the interpreter's slow teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
