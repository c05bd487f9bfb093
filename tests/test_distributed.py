"""torchrun: real gloo processes on the CPU, one thread each.

One 2-process ``torchrun`` run, shared by several tests, trains the ``selective`` strategy (scores, subsets, weights
and refreshes) on a user dataset that records, per rank, every sample index it hands out with gradients on, and a user
model that records a checksum of its parameters at every training step and outputs NaN at one step on rank 1 only:
so the tests see what each rank really trained, and that both replicas rolled back together. Another run is stopped
by SIGTERM to torchrun and resumed by two processes. Two more runs start the two workers by hand (torchrun's
environment, no agent that would tear the job down for them) to show that a rank killed or stopped mid-run makes the
other exit with one line in bounded time. The :class:`~timebudget.distributed.Group` methods are checked in two
spawned gloo processes.
"""
from __future__ import annotations

import gc
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from timebudget import distributed, sampler
from timebudget.distributed import Group, World
from timebudget.errors import PeerLost, TimebudgetError

from conftest import load_checkpoint, step_records

REPO = Path(__file__).resolve().parent.parent
BUDGET = 30.0  # start-up of two workers (each imports torch) took 10-22 s on the shared 2-core machine
HAND_BUDGET = 40.0  # the same, for workers started by hand
BATCH = 32  # the global batch: 16 per rank
N_TRAIN = 640

# A user dataset (module:function) that appends "index grad" to records-<rank>.txt for every item handed out: training
# batches are read with gradients on, refreshes and evaluations without.
RECORDING_DATA = """
    import os
    import torch
    from torch.utils.data import Dataset

    class Recording(Dataset):
        def __init__(self, n, seed, path=None):
            g = torch.Generator().manual_seed(seed)
            self.targets = torch.randint(0, 4, (n,), generator=g)
            centres = torch.randn(4, 16, generator=g) * 1.5
            self.x = centres[self.targets] + torch.randn(n, 16, generator=g)
            self.classes = list(range(4))
            self.log = open(path, "a", buffering=1) if path else None

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            if self.log:
                self.log.write(f"{i} {int(torch.is_grad_enabled())}\\n")
            return self.x[i], self.targets[i]

    def make():
        return Recording(%d, 0, f"records-{os.environ.get('RANK', '0')}.txt"), Recording(200, 1)
""" % N_TRAIN

NAN_AT = 60  # the training forward (calibration's two steps are the first two) that outputs NaN on rank 1

# A user model (module:function): an MLP that appends "call checksum" to params-<rank>.txt at every training forward
# (the sum of its parameters, in float64) and, on rank 1 only, outputs NaN at its NAN_AT-th training forward.
FAULTY_MODEL = """
    import os
    import torch
    from torch import nn

    class OneRankNaN(nn.Module):
        def __init__(self, features, num_outputs):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, num_outputs))
            self.rank, self.calls = os.environ.get("RANK", "0"), 0
            self.log = open(f"params-{self.rank}.txt", "a", buffering=1)

        def forward(self, x):
            out = self.body(x)
            if self.training:
                self.calls += 1
                with torch.no_grad():
                    total = sum(float(p.double().sum()) for p in self.parameters())
                self.log.write(f"{self.calls} {total!r}\\n")
                if self.rank == "1" and self.calls == %d:
                    out = out * float("nan")
            return out

    def nan_on_rank1(input_shape, num_outputs):
        return OneRankNaN(int(torch.tensor(input_shape).prod()), num_outputs)
""" % NAN_AT


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def _train_args(out: str, budget: float, model: str = "mlp") -> list[str]:
    return ["train", "--seconds", str(budget), "--data", "recording:make", "--model", model, "--strategy", "selective",
            "--keep-fraction", "0.5", "--batch-size", str(BATCH), "--out", out, "--quiet",
            "--set", "data_path=loader", "--set", "select_warmup=0.05", "--set", "log_every=5"]


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "timebudget",
            *args]


def _trained(lines: list[str]) -> list[int]:
    """The indices one process trained, from its records: lines read with gradients on, less the first item the
    loader looks at and the calibration batch."""
    trained = [int(line.split()[0]) for line in lines if line.endswith(" 1")]
    return trained[1 + BATCH // 2:]


def _check_shards(out: Path, trained: list[list[int]]) -> None:
    """Each epoch's subset is the same on both ranks (no plan had to be replaced by rank 0's) and each rank trained its
    own half of it, ``trained[rank]`` in order: disjoint shards of equal size, together the whole subset."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert not any(r.get("plan_replaced_by_rank0") for r in epochs)
    start = count = 0
    for epoch in epochs:
        shard = epoch["kept"] // 2
        count = sum(len(c) for c in sampler.batches(torch.arange(shard), BATCH // 2))
        parts = [set(ranks[start:start + count]) for ranks in trained]
        if not parts[0]:
            break  # the run stopped before this epoch trained
        assert len(parts[0]) == len(parts[1]) == len(trained[0][start:start + count])  # no repeats within a shard
        assert not parts[0] & parts[1]
        start += count
    assert start >= len(trained[0]) - count  # every trained sample was accounted for by an epoch


@dataclass
class TorchrunRun:
    cwd: Path
    out: Path
    proc: subprocess.CompletedProcess[str]
    wall_s: float

    def records(self, rank: int) -> list[int]:
        """The indices ``rank`` trained, in order."""
        return _trained((self.cwd / f"records-{rank}.txt").read_text().splitlines())


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory: pytest.TempPathFactory) -> TorchrunRun:
    cwd = tmp_path_factory.mktemp("torchrun")
    (cwd / "recording.py").write_text(textwrap.dedent(RECORDING_DATA))
    (cwd / "faulty.py").write_text(textwrap.dedent(FAULTY_MODEL))
    cmd = _torchrun(_train_args("run", BUDGET, "faulty:nan_on_rank1"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=BUDGET + 60)
    wall_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TorchrunRun(cwd, cwd / "run", proc, wall_s)


def test_torchrun_run_ends_by_the_deadline_counted_from_the_launch(torchrun_run: TorchrunRun) -> None:
    summary = json.loads((torchrun_run.out / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"]) == (2, "gloo")
    assert summary["elapsed_s"] <= BUDGET
    # the clock started with torchrun, not with the workers: torchrun's exit is all that follows the last artifact
    assert 0 < torchrun_run.wall_s - summary["elapsed_s"] < summary["launcher_exit_s"] + 3.0


def test_both_ranks_stop_after_the_same_step(torchrun_run: TorchrunRun) -> None:
    summary = json.loads((torchrun_run.out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["rank_steps"] == [steps, steps] and steps > 10
    assert summary["rank_samples"][0] == summary["rank_samples"][1] == summary["samples_trained"] // 2
    assert len(torchrun_run.records(0)) == len(torchrun_run.records(1)) == summary["rank_samples"][0]
    assert step_records(torchrun_run.out, summary)[-1]["step"] <= steps
    assert load_checkpoint(torchrun_run.out, summary)["steps"] == steps


def test_every_epoch_is_one_plan_split_into_disjoint_equal_shards(torchrun_run: TorchrunRun) -> None:
    records = [json.loads(line) for line in (torchrun_run.out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in records if r["event"] == "epoch"} >= {"warmup", "select"}
    _check_shards(torchrun_run.out, [torchrun_run.records(0), torchrun_run.records(1)])


def test_a_nan_on_one_rank_rolls_both_replicas_back_after_the_same_step(torchrun_run: TorchrunRun) -> None:
    """Rank 1 alone saw the NaN loss; both ranks rolled back after the same step, at the next per-step agreement (the
    guard's flag is agreed), so their parameters are identical at every training step, before and after, and the
    step after the rollback starts from a snapshot taken before the NaN."""
    summary = json.loads((torchrun_run.out / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["rollbacks"]) == 1
    checksums = [[line.split() for line in (torchrun_run.cwd / f"params-{r}.txt").read_text().splitlines()]
                 for r in (0, 1)]
    assert checksums[0] == checksums[1] and len(checksums[0]) > NAN_AT + 10
    values = [float(total) for _, total in checksums[0]]
    record = next(json.loads(line) for line in (torchrun_run.out / "metrics.jsonl").read_text().splitlines()
                  if '"rollback"' in line)
    assert not record["diverged"]
    # forward calls 1 and 2 are calibration's; training step k is call k + 2, so call NAN_AT is step NAN_AT - 2
    after = record["step"] + 2  # the forward right after the rollback (0-based index into the calls)
    assert NAN_AT - 2 <= record["step"] and after < len(values)
    assert all(math.isfinite(v) for v in values[:NAN_AT] + values[after:])  # NaN only until the agreed rollback
    assert values[after] in values[2:NAN_AT]


def test_only_rank_zero_writes(torchrun_run: TorchrunRun) -> None:
    assert sorted(p.name for p in torchrun_run.cwd.iterdir() if p.name != "__pycache__") == [
        "faulty.py", "params-0.txt", "params-1.txt", "recording.py", "records-0.txt", "records-1.txt", "run"]
    assert sorted(p.name for p in torchrun_run.out.iterdir()) == [
        "checkpoint.pt", "config.yaml", "metrics.jsonl", "scores.pt", "summary.json"]
    assert torchrun_run.proc.stdout == ""  # --quiet on rank 0, and the other rank is always quiet


# --- SIGTERM to torchrun, and a resume with two processes ----------------------------------------------------------
RESUME_BUDGET = 60.0  # the resumed part gets what the first left: two start-ups of two workers, and some training


def test_sigterm_to_torchrun_saves_the_run_and_two_processes_resume_it(tmp_path: Path) -> None:
    """torchrun passes SIGTERM to its workers; all ranks stop after the same step and rank 0 saves the run as
    interrupted. One process may not resume it (one line); two do, each from its own shard's position, within what
    the first part left of the budget, and together they train every epoch's subset exactly once."""
    (tmp_path / "recording.py").write_text(textwrap.dedent(RECORDING_DATA))
    out = tmp_path / "run"
    args = [*_train_args("run", RESUME_BUDGET), "--checkpoint-every", "1"]
    proc = subprocess.Popen(_torchrun(args), cwd=tmp_path, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        _wait_for_training(tmp_path, [proc])
        time.sleep(1.5)
        # a crash-safe checkpoint, written while training (all ranks agreed on when): every rank's part of the epoch
        periodic = torch.load(out / "checkpoint.pt", weights_only=True)
        assert len(periodic["cursor"]["losses"]) == 2 * periodic["cursor"]["done"] > 0
        assert len(periodic["rng"]["ranks"]) == 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = json.loads((out / "summary.json").read_text())
    assert (first["status"], first["signal"]) == ("interrupted", "SIGTERM"), err[-3000:]
    assert first["rank_steps"] == [first["steps"]] * 2 and first["steps"] > 0
    assert err.count("timebudget: interrupted by SIGTERM") == 1  # rank 0's line only
    assert '"event": "checkpoint"' in (out / "metrics.jsonl").read_text()
    lines = [(tmp_path / f"records-{r}.txt").read_text().splitlines() for r in (0, 1)]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2
    # it stopped within an epoch in most runs: then each rank's part of it is kept; a signal that lands in the epoch's
    # end work (all-gather, scoring, the next plan) stops at the boundary, with no epoch in progress to keep (2 of 9
    # runs in session 8); the resume below must work either way
    cursor = state["cursor"]
    if cursor is not None:
        assert len(cursor["losses"]) == 2 * cursor["done"] and len(cursor["order"]) >= 2 * cursor["done"]
    streams = [rank["augment"] for rank in state["rng"]["ranks"]]  # each rank's own augmentation stream
    assert len(streams) == 2 and not torch.equal(*streams)

    alone = subprocess.run([sys.executable, "-m", "timebudget", "train", "--resume", "run"], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        "timebudget: error: --resume 'run': the run was trained by 2 processes (torchrun --nproc_per_node 2) and this "
        "launch has 1; resume it with the same number: 2 processes (torchrun --nproc_per_node 2)"]
    assert json.loads((out / "summary.json").read_text()) == first

    t0 = time.perf_counter()
    resumed = subprocess.run(_torchrun(["train", "--resume", "run", "--quiet"]), cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=RESUME_BUDGET + 60)
    wall_s = time.perf_counter() - t0
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and [p["status"] for p in summary["parts"]] == ["interrupted", "completed"]
    # the budget is what the first part left, counted from the second torchrun's start
    assert summary["budget_s"] == pytest.approx(RESUME_BUDGET - first["elapsed_s"])
    assert summary["elapsed_s"] <= summary["budget_s"]
    assert 0 < wall_s - summary["elapsed_s"] < summary["launcher_exit_s"] + 3.0
    steps = summary["steps"]
    assert summary["rank_steps"] == [steps, steps] and summary["parts"][1]["steps"] > 0
    assert steps == first["steps"] + summary["parts"][1]["steps"]
    # each rank went on from its own position in the epoch it stopped in: its shards, both parts together
    after = [(tmp_path / f"records-{r}.txt").read_text().splitlines() for r in (0, 1)]
    trained = [_trained(lines[r]) + _trained(after[r][len(lines[r]):]) for r in (0, 1)]
    assert len(trained[0]) == len(trained[1]) == summary["rank_samples"][0] == summary["samples_trained"] // 2
    _check_shards(out, trained)


# --- a rank that dies or stalls ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[str]]]]:
    """Two ``timebudget train`` workers with torchrun's environment, started by hand (no agent to end the job)."""
    (tmp_path / "recording.py").write_text(textwrap.dedent(RECORDING_DATA))
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, "-m", "timebudget", *_train_args("run", HAND_BUDGET)], cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=port))
        for rank in (0, 1)
    ]
    yield tmp_path, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_training(cwd: Path, procs: list[subprocess.Popen[str]]) -> float:
    """Block until rank 0 has logged training steps; return the time (perf_counter)."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        log = cwd / "run" / "metrics.jsonl"
        if log.exists() and '"event": "step"' in log.read_text():
            return time.perf_counter()
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
        time.sleep(0.1)
    raise AssertionError("rank 0 never started training")


def test_a_killed_rank_makes_the_other_exit_at_once(two_workers: tuple[Path, list[subprocess.Popen[str]]]) -> None:
    cwd, procs = two_workers
    _wait_for_training(cwd, procs)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.perf_counter()
    _, err = procs[0].communicate(timeout=30)
    assert time.perf_counter() - t0 < 10.0
    assert procs[0].returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("timebudget: error: rank 0 of 2: another rank died"), err
    assert "connection" in lines[0]
    assert not (cwd / "run" / "summary.json").exists()


def test_a_stalled_writer_makes_the_other_exit_soon_after_the_deadline(
    two_workers: tuple[Path, list[subprocess.Popen[str]]]
) -> None:
    cwd, procs = two_workers
    started = _wait_for_training(cwd, procs)
    procs[0].send_signal(signal.SIGSTOP)
    _, err = procs[1].communicate(timeout=HAND_BUDGET + 30)
    # the budget counted from before training started, so this bound is loose by the start-up
    assert time.perf_counter() < started + HAND_BUDGET + distributed.GRACE_S + 5.0
    assert procs[1].returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("timebudget: error: rank 1 of 2: another rank died"), err
    assert "past the deadline" in lines[0]


# --- the launch start --------------------------------------------------------------------------------------------
def test_launch_start_is_the_parent_under_torchrun() -> None:
    """A worker launched 1 s after its parent started counts its budget from the parent's start under torchrun
    (``TORCHELASTIC_RUN_ID`` set), and from its own start otherwise."""
    child = ("import os; from timebudget import clock, distributed; own = clock.process_start_time(); "
             "print(own - distributed.launch_start(own)); del os.environ['TORCHELASTIC_RUN_ID']; "
             "print(own - distributed.launch_start(own))")
    parent = (f"import subprocess, sys, time; time.sleep(1.0); "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", parent], env=_env(TORCHELASTIC_RUN_ID="x"), capture_output=True,
                         text=True)
    under_torchrun, alone = (float(line) for line in out.stdout.split())
    assert 1.0 <= under_torchrun < 30.0 and alone == 0.0


# --- the world's face ----------------------------------------------------------------------------------------------
def test_world_of_one_changes_nothing() -> None:
    assert World().agree(False, None, True, True, True) == (False, None, True, True, True)
    assert World().agree(False, "SIGUSR1") == (True, "SIGUSR1", False, False, False)
    world = World()
    order, weights = torch.randperm(10), torch.rand(10)
    assert world.shard(order) is order and world.agree_plan(order, weights, None) == (order, weights, None, False)
    assert world.agree_stop(True) and not world.agree_stop(False)
    assert world.progress(0.3) == 0.3 and world.rank_batch(7) == 7 and world.seed(5) == 5
    assert world.from_writer(1.0, 2.0) == (1.0, 2.0) and world.gather_objects("x") == ["x"] and world.any(True)
    assert world.summary(3, 96, 1.5) == {"world_size": 1, "backend": None, "rank_steps": [3], "rank_samples": [96],
                                         "rank_train_s": [1.5], "launcher_exit_s": 0.0}
    assert distributed.init("cpu", 10.0, time.monotonic()).size == 1  # no torchrun environment here


def test_batch_size_must_split_across_ranks() -> None:
    group = Group(1, 3, 1, "gloo", 10.0, owned=False, launcher_exit_s=0.0)
    assert group.rank_batch(96) == 32
    with pytest.raises(TimebudgetError, match="batch_size 100 does not split evenly across 3 processes.*e.g. 102"):
        group.rank_batch(100)


@pytest.mark.parametrize(("error", "cause"), [
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1"),
     "its connection to another rank closed"),
    (RuntimeError("Application timeout caused pair closure"), "past the deadline"),  # gloo, a pair timed out
])
def test_a_lost_peer_becomes_one_line_naming_the_cause(error: Exception, cause: str) -> None:
    group = Group(1, 2, 1, "gloo", 10.0, owned=False, launcher_exit_s=0.0)
    with pytest.raises(PeerLost, match=f"rank 1 of 2: another rank died or stalled \\(.*{cause}"):
        with group.guard():
            raise error
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with group.guard():
            raise ValueError("a bug")


def test_shards_are_equal_and_disjoint() -> None:
    order = torch.randperm(11)
    shards = [Group(r, 3, r, "gloo", 10.0, owned=False, launcher_exit_s=0.0).shard(order) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert len(set(torch.cat(shards).tolist())) == 9


def _group_checks(rank: int, port: int, results: Path) -> None:
    """In each of two spawned processes: the collectives of :class:`Group`, written to ``results/<rank>.pt``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world = distributed.init("cpu", 30.0, time.monotonic())
    from timebudget.clock import BudgetClock

    clock = BudgetClock(30.0)
    clock.start_training()
    world.attach(clock)
    out: dict[str, object] = {"stops": [world.agree_stop(vote) for vote in ([False, True], [False, False])[rank]]}
    out["progress"] = world.progress(-1.0)
    if rank == 0:
        clock.seed_step(0.01)  # rank 0's step estimate sets the steps between per-step agreements
    steps = []  # rank 1 wants to stop from its fourth step on; both learn it at the next agreement
    for i in range(30):
        steps.append((world.progress(-1.0), world.agree_step(rank == 1 and i >= 3).stop))
    out["steps"] = steps
    out["votes"] = [world.agree(False, None, bad=rank == 1, snapshot=rank == 0, save=rank == 1),
                    world.agree(False, "SIGTERM" if rank == 1 else None), world.agree(False)]
    out["any"] = [world.any(rank == 1), world.any(False)]
    out["objects"] = world.gather_objects({"rank": rank})
    norm = torch.nn.BatchNorm1d(3)
    norm(torch.randn(8, 3) + 10 * rank)  # each rank's own running statistics
    world.sync_buffers(norm)
    out["buffers"] = {k: v.clone() for k, v in norm.state_dict().items()}
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model.load_state_dict({k: v + rank for k, v in model.state_dict().items()})
    wrapped = world.wrap(model)  # DDP: rank 0's parameters at the start
    model[1].running_mean.fill_(float(rank))  # then each rank's own statistics, which no forward pass overwrites
    wrapped(torch.zeros(8, 3))
    out["ddp"] = {k: v.clone() for k, v in model.state_dict().items()}
    mine = torch.arange(6) + 10 * rank
    out["gathered"] = world.all_gather_losses(mine, mine.float() / 100)
    out["writer"] = world.from_writer(float(rank), 7.0)
    same = torch.arange(8)
    out["same"] = world.agree_plan(same, None, None)
    differs = torch.arange(5 + rank) * (rank + 1)
    out["differs"] = world.agree_plan(differs, torch.full((4,), float(rank)), torch.tensor([rank]))
    torch.save(out, results / f"{rank}.pt")
    del wrapped  # DDP's reducer goes before its process group: once in CI, rank 1 aborted in gloo's teardown
    gc.collect()
    world.close()


def test_group_collectives_in_two_gloo_processes(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_group_checks, args=(_free_port(), tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["stops"] == r1["stops"] == [False, True]  # one rank's vote stops both
    assert r0["progress"] == r1["progress"] >= 0  # rank 0's progress, everywhere
    # the per-step agreement came at the first step, then every VOTE_EVERY_S / 0.01 steps: rank 1's stop (from its
    # fourth step on) reached both at the second; between agreements both ranks advanced rank 0's progress alike
    assert r0["steps"] == r1["steps"]
    every = int(distributed.VOTE_EVERY_S / 0.01)
    assert every > 4 and [stop for _, stop in r0["steps"]].index(True) == every
    progress = [p for p, _ in r0["steps"][1:every + 1]]
    assert all(b > a for a, b in zip(progress, progress[1:]))
    # any rank's bad loss and signal, rank 0's snapshot and save decisions; a signal stops every later agreement too
    assert r0["votes"] == r1["votes"] == [(False, None, True, True, False), (True, "SIGTERM", False, False, False),
                                          (True, "SIGTERM", False, False, False)]
    assert r0["any"] == r1["any"] == [True, False]
    assert r0["objects"] == r1["objects"] == [{"rank": 0}, {"rank": 1}]
    assert all(torch.equal(r0["buffers"][k], r1["buffers"][k]) for k in r0["buffers"])  # rank 0's, everywhere
    assert torch.equal(r0["ddp"]["0.weight"], r1["ddp"]["0.weight"])
    # the same batch statistics on both ranks; rank 1 kept its own running mean (1, decayed by the momentum 0.1)
    assert torch.allclose(r1["ddp"]["1.running_mean"] - r0["ddp"]["1.running_mean"], torch.full((3,), 0.9))
    for gathered in (r0["gathered"], r1["gathered"]):
        assert gathered[0].tolist() == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]
        assert torch.equal(gathered[1], gathered[0].float() / 100)
    assert r0["writer"] == r1["writer"] == (0.0, 7.0)
    assert r0["same"][3] is False and r1["same"][3] is False
    for order, weights, refresh, replaced in (r0["differs"], r1["differs"]):
        assert replaced and order.tolist() == [0, 1, 2, 3, 4]
        assert weights.tolist() == [0.0] * 4 and refresh.tolist() == [0]
