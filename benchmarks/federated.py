"""Federated rounds under a deadline: timebudget clients against Flower-style fixed-epoch clients.

Both run the same real loopback deployment (``timebudget federated``: SuperLink, one SuperNode per client, the
ServerApp on Flower's FedAvg with the round's cap as its timeout) with the same data, Dirichlet partitions, clients
(one of them 4x slower), rounds and per-round cap. The only difference is the client: ``timebudget`` trains about 2
local passes (``--max-local-passes``, ``passes=0``: until its deadline), never past its deadline (``timebudget.train``
for the cap less its measured reserve), its learning rate decaying to zero within each round or once across all
rounds (``--lr-decay``); ``epochs`` trains one local epoch at a
constant learning rate, as Flower's quickstart does, however long it takes, and a reply later than the timeout is
dropped. Variants are interleaved per cap and seed, so a change in the machine's load hits all of them.

Reported per mode and cap: replies in time (%), errors, the global test accuracy after each round with the seconds
since the deployment started, the accuracy both modes had reached by the same wall-clock second (the earliest of the
runs' ends), and the seconds each client idled (from its reply to the round's end, which is the last in-time
reply or the timeout).

Also per mode and cap: the median seconds from the server's send to a client's first line of code (Flower's delivery,
the SuperNode's poll, the per-message ``flwr-clientapp`` process start-up) and the longest reply trip (from the
client's return to the server's receipt), where a trained reply's round went (``STAGES``, from the timing stamps of
the SuperNodes and warm executors), and, at the end, the caps at which every timebudget reply came in time and at
which every one also trained.

Smoke run: ``python benchmarks/federated.py --caps 15 --rounds 2``; the README table:
``OMP_NUM_THREADS=1 python benchmarks/federated.py --caps 8,15,30 --rounds 4 --seeds 0,1 --variants
timebudget:round,epochs``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES, DECAYS, PROCESSES = ("timebudget", "epochs"), ("round", "federation"), ("warm", "fresh")
# launcher flags a variant may set with KEY=VALUE
FLAGS = {"passes": "--max-local-passes", "rounds": "--rounds", "poll": "--supernode-poll", "weighting": "--weighting"}


def parse_variants(text: str) -> list[dict[str, str]]:
    """``timebudget,timebudget:fresh,timebudget:passes=5,epochs`` as one dict per client: its mode, then, separated
    by colons and in any order, the learning-rate decay (``round``, the default, or ``federation``), the ClientApp
    processes (``warm``, the default, or ``fresh``) and launcher flags (``passes=N``; ``rounds=N`` instead of
    ``--rounds``, e.g. to give one-epoch clients as many rounds as fit in the wall-clock the others take)."""
    picked = []
    for item in text.split(","):
        mode, *qualifiers = item.split(":")
        variant = {"mode": mode, "decay": "round", "processes": "warm"}
        for q in qualifiers:
            key, eq, value = q.partition("=")
            if q in DECAYS:
                variant["decay"] = q
            elif q in PROCESSES:
                variant["processes"] = q
            elif eq and key in FLAGS:
                variant[key] = value
            else:
                raise SystemExit(f"variant {item!r}: unknown {q!r}; allowed: {', '.join(DECAYS + PROCESSES)}, "
                                 f"{', '.join(k + '=VALUE' for k in FLAGS)}")
        if mode not in MODES:
            raise SystemExit(f"variant {item!r}: unknown client {mode!r}; allowed: {', '.join(MODES)}")
        picked.append(variant)
    return picked


def label(variant: dict[str, str]) -> str:
    """The table's name for a variant, e.g. ``timebudget (round, fresh, passes=5)``."""
    extra = [variant["processes"]] + [f"{k}={variant[k]}" for k in FLAGS if k in variant]
    if variant["mode"] == "epochs":
        return f"epochs (1 epoch, constant lr, {', '.join(extra)})"
    return f"timebudget ({', '.join([variant['decay']] + extra)})"


def run_once(out: Path, variant: dict[str, str], cap: float, args: argparse.Namespace, seed: int) -> dict:
    argv = [sys.executable, "-m", "timebudget", "federated", "--out", str(out), "--mode", variant["mode"],
            "--lr-decay", variant["decay"], "--client-processes", variant["processes"], "--quiet",
            "--clients", str(args.clients), "--rounds", variant.get("rounds", str(args.rounds)),
            "--round-seconds", f"{cap:g}",
            "--data", args.data, "--partition", args.partition, "--client-speed", args.speeds, "--seed", str(seed)]
    for key, flag in FLAGS.items():
        if key in variant and key != "rounds":
            argv += [flag, variant[key]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate()
    except KeyboardInterrupt:  # let the launcher stop its Flower processes
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise SystemExit(f"{label(variant)} cap {cap:g} seed {seed} failed: {stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary["replies"] = [r for r in records if "node" in r]
    summary["stages"] = stages(out, summary["replies"], any("reply_paths" in r for r in records))
    summary["outside_wall_s"] = time.perf_counter() - t0
    return summary


def stamps(log: Path, prefix: str) -> list[float]:
    """The wall-clock seconds of a log's lines that start with ``prefix`` (``timebudget.federated.supernode``'s and
    ``.executor``'s timing stamps), in order."""
    if not log.exists():
        return []
    return [float(line.rsplit(" ", 1)[1]) for line in log.read_text(errors="replace").splitlines()
            if line.startswith(prefix)]


# a round's stages, each from the previous stamp: the server's send, the SuperNode holding the message and its objects
# (pulled from the SuperLink), the ClientApp process's start (forked by the warm executor), the process holding the
# message (pulled from the SuperNode), its handler's first line (Flower's app install and load in between),
# the first training step, the tail (final evaluation, checkpoint), the handler's return, the reply with the SuperNode
# (pushed by the ClientApp process), the reply with the SuperLink (pushed by the SuperNode), the server's poll that
# found it. The process can start before the SuperNode holds the objects (it then waits for them in its start-up).
STAGES = ("node has it", "process start", "pulled", "start-up", "set-up", "training", "tail", "push", "node out",
          "to server")


def stages(out: Path, replies: list[dict], queried: bool) -> list[dict[str, float]]:
    """Per trained reply, seconds from the server's send to each stamp (``STAGES``): from rounds.jsonl and the
    timing stamps in the SuperNodes' and warm executors' logs (one message at a time per node, the query before round
    1 first when the server sent one, so the k-th stamp of a node is its k-th message's)."""
    found = []
    for r in replies:
        if "error" in r or "first_step_s" not in r or not r["in_time"]:
            continue
        k, logs = r["round"] - 1 + queried, out / "logs"
        node_in = stamps(logs / f"supernode_{r['client']}.log", "timebudget supernode: message in at")
        node_out = stamps(logs / f"supernode_{r['client']}.log", "timebudget supernode: reply out at")
        pulled = stamps(logs / f"executor_{r['client']}.log", "timebudget executor: message pulled at")
        pushed = stamps(logs / f"executor_{r['client']}.log", "timebudget executor: reply pushed at")
        if min(len(node_in), len(node_out), len(pulled), len(pushed)) <= k:
            continue
        sent = r["sent_at"]
        at = [node_in[k] - sent, r["delivery_s"], pulled[k] - sent, r["delivery_s"] + r["startup_s"], r["first_step_s"],
              r["tail_start_s"], r["client_seconds"], pushed[k] - sent, node_out[k] - sent, r["seconds"]]
        found.append(dict(zip(STAGES, at)))
    return found


def accuracy_at(summary: dict, second: float) -> float:
    """The global accuracy of the last round evaluated by ``second`` (seconds since the ServerApp started)."""
    reached = [r["test_metrics"]["accuracy"] for r in summary["rounds"] if r["elapsed_s"] <= second]
    return reached[-1] if reached else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caps", default="12,20", help="comma-separated round caps in seconds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--speeds", default="1,1,0.25", help="one speed per client (0.25: 4x slower)")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--variants", default="timebudget,timebudget:federation,epochs",
                        help="comma-separated clients to compare, e.g. timebudget, timebudget:fresh, "
                        "timebudget:passes=5, epochs (see parse_variants)")
    parser.add_argument("--at", default="", help="comma-separated seconds, one per cap, at which to compare the "
                        "variants' accuracy (default: the earliest end among the variants)")
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    caps = [float(c) for c in args.caps.split(",")]
    at = [float(a) for a in args.at.split(",")] if args.at else []
    if at and len(at) != len(caps):
        raise SystemExit(f"--at has {len(at)} values for {len(caps)} caps")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[tuple[float, str], list[dict]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="tb-fed-bench-") as tmp:
        for cap in caps:
            for seed in seeds:
                for i, variant in enumerate(variants):
                    summary = run_once(Path(tmp) / f"v{i}-{cap:g}-{seed}", variant, cap, args, seed)
                    results.setdefault((cap, label(variant)), []).append(summary)
                    loads.append(os.getloadavg()[0])
                    print(f"# done {label(variant)} cap {cap:g} seed {seed}: {summary['outside_wall_s']:.0f} s, "
                          f"load {loads[-1]:.1f}", file=sys.stderr)
    print(f"\n$ python {' '.join(sys.argv)}")
    print(f"{args.clients} clients (speeds {args.speeds}), {args.rounds} rounds, data {args.data}, partition "
          f"{args.partition}, seeds {args.seeds}; {os.cpu_count()} CPUs, 1-minute load average {loads[0]:.1f} at the "
          f"start, {statistics.median(loads):.1f} median and {max(loads):.1f} highest after each run\n")
    print("| cap s | client (lr decay, ClientApp processes, remedy) | trained, in time | refused in time | late | "
          "passes/round (per client) | idle s (per client) | to first line s: median (range): delivery + start-up | "
          "trip s | median accuracy after each round (s since start) | acc. at the same second: median (per seed) | "
          "final acc.: median (per seed) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c, cap in enumerate(caps):
        same_second = [at[c] if at else min(results[(cap, label(v))][i]["rounds"][-1]["elapsed_s"] for v in variants)
                       for i in range(len(seeds))]
        for variant in variants:
            name = label(variant)
            runs = results[(cap, name)]
            replies = [r for s in runs for r in s["replies"]]
            ok = sum(r["in_time"] and "error" not in r for r in replies)
            refused = sum(r["in_time"] and "error" in r for r in replies)
            late = len(replies) - ok - refused
            clients = runs[0]["clients"]
            passes = " / ".join(f"{statistics.median(s['clients'][c].get('passes_per_round', 0) for s in runs):.1f}"
                                for c in range(len(clients)))
            idle = " / ".join(f"{statistics.median(s['clients'][c]['idle_s'] for s in runs):.1f}"
                              for c in range(len(clients)))
            curve = ", ".join(  # median over seeds, round by round
                f"{statistics.median(s['rounds'][i]['test_metrics']['accuracy'] for s in runs):.3f} "
                f"({statistics.median(s['rounds'][i]['elapsed_s'] for s in runs):.0f})"
                for i in range(1, len(runs[0]["rounds"])))
            at_same_seeds = [accuracy_at(s, t) for s, t in zip(runs, same_second)]
            at_same = statistics.median(at_same_seeds)
            timed = [r for r in replies if "delivery_s" in r]
            starts = [r["delivery_s"] + r["startup_s"] for r in timed]
            trips = [r["trip_s"] for r in replies if "trip_s" in r]
            start = (f"{statistics.median(starts):.1f} ({min(starts):.1f}-{max(starts):.1f}): "
                     f"{statistics.median(r['delivery_s'] for r in timed):.1f} + "
                     f"{statistics.median(r['startup_s'] for r in timed):.1f}" if timed else "-")
            trip = f"{max(trips):.2f}" if trips else "-"
            finals = [s["final_test_metrics"]["accuracy"] for s in runs]
            print(f"| {cap:g} | {name} | {ok}/{len(replies)} ({100 * ok / max(len(replies), 1):.0f}%) | {refused} | {late} | "
                  f"{passes} | {idle} | {start} | {trip} | {curve} | "
                  f"{at_same:.3f} at {statistics.median(same_second):.0f} s "
                  f"({', '.join(f'{a:.3f}' for a in at_same_seeds)}) | "
                  f"{statistics.median(finals):.3f} ({', '.join(f'{a:.3f}' for a in finals)}) |")
    print("\nWhere a trained in-time reply's round went: seconds from the server's send to each stage's end (median "
          "and highest over the replies; see STAGES), then the reply's trip (handler's return to the server's poll) "
          "and the reserve the client kept for it")
    print("\n| cap s | client | replies | " + " | ".join(STAGES) + " | trip | reserve |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in STAGES) + " | --- | --- |")
    for (cap, name), runs in results.items():
        rows = [row for s in runs for row in s["stages"]]
        if not rows:
            continue
        trips = [row["to server"] - row["tail"] for row in rows]
        reserves = [r["reply_reserve"] for s in runs for r in s["replies"] if "reply_reserve" in r]
        cells = [f"{statistics.median(row[k] for row in rows):.2f} ({max(row[k] for row in rows):.2f})" for k in STAGES]
        print(f"| {cap:g} | {name} | {len(rows)} | {' | '.join(cells)} | {statistics.median(trips):.2f} "
              f"({max(trips):.2f}) | {statistics.median(reserves):.2f} ({min(reserves):.2f}-{max(reserves):.2f}) |")
    for variant in variants:
        if variant["mode"] != "timebudget":
            continue
        name = label(variant)
        arrived = [c for c in caps if all(r["in_time"] for s in results[(c, name)] for r in s["replies"])]
        trained = [c for c in arrived if all("error" not in r for s in results[(c, name)] for r in s["replies"])]
        print(f"\n{name}: every reply in time at caps {', '.join(f'{c:g}' for c in arrived) or 'none'} s;"
              f" every reply in time and trained at {', '.join(f'{c:g}' for c in trained) or 'none'} s")
    print("\nReplies not in time, and error replies:")
    for (cap, variant), runs in results.items():
        for seed, run in zip(seeds, runs):
            for r in run["replies"]:
                if not r["in_time"] or "error" in r:
                    seen = "never seen" if r["seconds"] is None else f"seen at {r['seconds']:.2f} s"
                    client_s = r.get("client_seconds", float("nan"))
                    why = r.get("error") or f"the client replied at {client_s:.2f} s by its clock"
                    print(f"- cap {cap:g} {variant} seed {seed}: round {r['round']} client {r['client']}, "
                          f"{seen}: {why}")


if __name__ == "__main__":
    main()
