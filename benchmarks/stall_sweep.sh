#!/usr/bin/env bash
# Every dock's stall benchmark, each case in fresh processes, 1 torch thread, under Xvfb
# (docs/widgets.md, Responsiveness). Run it on an otherwise idle machine: other processes'
# turns on the CPU show up as stalls. ~12 minutes on 2 cores.
#   benchmarks/stall_sweep.sh [OUTPUT_FOLDER]      (default: stall-sweep)
set -u
cd "$(dirname "$0")/.."
O=${1:-stall-sweep}
mkdir -p "$O"
unset PYTHONDONTWRITEBYTECODE
export OMP_NUM_THREADS=1
run() { n=$1; shift; echo "### $n  $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> "$O/log.txt"
        timeout 900 "$@" > "$O/$n.txt" 2>&1; echo "rc=$? $(date +%T)" >> "$O/log.txt"; }
run evaluate xvfb-run -a python benchmarks/bench_widget_stalls.py --n 120 --shape 32 96 96
run nuclei xvfb-run -a python benchmarks/bench_widget_stalls.py --widget nuclei --cases dock-warmup --repeats 2
run neurons xvfb-run -a python benchmarks/bench_widget_stalls.py --widget neurons --cases dock-warmup --repeats 2
run neurons-cold xvfb-run -a python benchmarks/bench_widget_stalls.py --widget neurons --cases dock-warmup --cold --repeats 1
run arrival1000 xvfb-run -a python benchmarks/bench_widget_stalls.py --widget arrival --n 1000 --repeats 2
run proofread xvfb-run -a python benchmarks/bench_stalls_proofread.py --repeats 2
run batch xvfb-run -a python benchmarks/bench_stalls_batch.py --repeats 2
run finetune xvfb-run -a python benchmarks/bench_stalls_finetune.py --repeats 1 --minutes 0.5
run open xvfb-run -a python benchmarks/bench_widget_stalls.py --widget open --repeats 1
echo done >> "$O/log.txt"
