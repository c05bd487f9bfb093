#!/usr/bin/env bash
# The GPU checks of issues 4 and 16, for a session that has a CUDA device: about 11 minutes on one H200 (session 14:
# env 7 s, tests 139 s, resnet18 over 90 s at 50,000 rows, airnet 125 s, profile 88 s, deadline 68 s; session 13:
# startup 107 s). A device call runs at most 10 minutes, so split the sections over two calls made back to back,
# while the machine is still warm:
#
#   SECTIONS="env tests resnet18 airnet" TOTAL_S=450 bash benchmarks/gpu_check.sh       # the first call
#   SECTIONS="startup profile deadline" TOTAL_S=280 bash benchmarks/gpu_check.sh   # the second
#
# Logs go under $OUT if set, else runs/gpu-check-<time>/. On the device machine python3 holds torch and the package
# is not installed: run with PYTHON=python3 PYTHONPATH=$PWD.
#
# Sections, each with its own time limit, clipped to what is left of TOTAL_S (480 s by default: too little for all of
# them, which is why the calls above name theirs). A section cut short says so in summary.txt, and the next ones still
# run while time is left:
#   env          nvidia-smi, torch and CUDA versions
#   tests        the CUDA tests (tests/test_accel.py: end-to-end CUDA runs incl. compile, the CUDA timeline), with
#                TIMEBUDGET_TEST_CUDA=1: without it the tests hide the GPU (tests/conftest.py)
#   profile      benchmarks/step_profile.py: kernel launches, event records and host time per step, timebudget's
#                loop against the plain loop, resnet18 bf16 on a CIFAR-shaped set (1 s of each loop: reading the
#                profiler's trace takes about 100 s; 6 s of each outlasted 50 s)
#   resnet18     benchmarks/throughput.py, resnet18 bf16: full and selective against the plain loop (paired rounds), on
#                50,000 CIFAR-shaped rows as in CIFAR-10 (session 13 used the default 5,000: epochs of tens of ms)
#   startup      benchmarks/startup.py CUDA rows: the digits job, the fast config without compile, with a cold and a
#                warm compile cache (the goal: under 5 s warm)
#   airnet       benchmarks/throughput.py, the fast config's step (airnet, bf16, channels_last, compile)
#   deadline     benchmarks/deadline.py on CUDA: 15 and 30 s budgets, and 20 s with a competing CPU load
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
TOTAL_S=${TOTAL_S:-480}
SECTIONS=${SECTIONS:-env tests profile resnet18 startup airnet deadline}
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

section() {  # section NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the time left; log its status
    local name=$1 limit=$2
    shift 2
    [[ " $SECTIONS " == *" $name "* ]] || return 0
    local left=$((TOTAL_S - ($(date +%s) - START)))
    if ((left < 20)); then
        echo "$name: skipped, ${left} s left of TOTAL_S=${TOTAL_S}" | tee -a "$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    local t0=$(date +%s)
    echo "== $name (limit ${limit} s): $*" | tee -a "$SUMMARY"
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local note=""
    ((rc == 124 || rc == 130)) && note=" (cut at the time limit: partial)"
    echo "$name: exit $rc after $(($(date +%s) - t0)) s$note" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log" >> "$SUMMARY"
}

section env 30 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(), torch.cuda.is_available())'"
section tests 200 env TIMEBUDGET_TEST_CUDA=1 "$PY" -m pytest tests/test_accel.py -q -rs --durations=8
section profile 130 "$PY" benchmarks/step_profile.py --device cuda --model resnet18 --data cifar-shaped \
    --precision bf16 --seconds 1
section resnet18 160 "$PY" benchmarks/throughput.py --devices cuda --models resnet18 --seconds 4 --rounds 3 \
    --sizes 1e4,1e6 --rows 50000
section startup 120 "$PY" benchmarks/startup.py --configs floor cuda cuda-fast-nocompile cuda-fast-cold \
    cuda-fast-warm --runs 1
section airnet 150 "$PY" benchmarks/throughput.py --devices cuda --models airnet --seconds 4 --rounds 2 --sizes 1e4 \
    --rows 50000
section deadline 120 "$PY" benchmarks/deadline.py --devices cuda --budgets 15 30 --runs 1 --load-budget 20 --no-peer
echo "total $(($(date +%s) - START)) s; logs in $OUT" | tee -a "$SUMMARY"
