#!/usr/bin/env bash
# The variants of the default measured on the no-regret suite (docs/benchmarks.md, "What was tried").
# Each line is one variant (variants measured together share a comment): a label and its settings;
# results accumulate in
# benchmarks/results/suite_variants.json (a (task, label, seed) already there is not run again), and
# the table of all of them is written next to it. 3 seeds; about 4 min of one core per variant.
# (local-w20-rp-c2 is the current Local default; the current Glocal default, the suite's glocal rows,
# is glocal-w20-rp-c2-r10-rec2 recording every 5 steps instead of 2.)
#
#   OMP_NUM_THREADS=1 benchmarks/bench_suite_variants.sh            # every variant
#   OMP_NUM_THREADS=1 benchmarks/bench_suite_variants.sh local-run  # one of them
#   TASKS=mnist1d-mlp JSON=benchmarks/results/suite_extra.json benchmarks/bench_suite_variants.sh glocal-run-guard1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
JSON="${JSON:-benchmarks/results/suite_variants.json}"
SUITE=digits-cnn-bn,seq-transformer,diabetes-mlp,digits-mlp-long,mnist1d-mlp-indep
declare -A VARIANTS=(
    # The settings are explicit: the defaults changed after most were measured (before: windows of
    # 100 steps, no adaptive rates, Glocal re-anchored every 5 windows), so each line reproduces its rows.
    # the previous defaults themselves
    [local-w100]="--strategies local --set window=100 --set hyper_etas=null"
    [glocal-w100-r5]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":5}"
    # the outer step: a larger hyper learning rate for Local
    [local-hyperlr0.3]="--strategies local --set window=100 --set hyper_etas=null --set hyper_lr=0.3"
    # per-window trajectories (tangents reset at each window), as before anchoring
    [glocal-window-guard3]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"anchor\":\"window\",\"untrusted\":\"guard\"} --set max_ratio=3"
    [glocal-window-guard1]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"anchor\":\"window\",\"untrusted\":\"guard\"} --set max_ratio=1"
    [glocal-window-guard10-step1]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"anchor\":\"window\",\"untrusted\":\"guard\"} --set max_ratio=10 --set max_step=1.0"
    [glocal-window-zero]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"anchor\":\"window\",\"disagree\":\"zero\",\"untrusted\":\"guard\"} --set max_ratio=3"
    # trajectories kept from the run's start (never re-anchored) or re-anchored every 5 / 10 windows
    [local-run]="--strategies local --set window=100 --set hyper_etas=null --set local_options={\"anchor\":\"run\",\"reanchor_every\":null}"
    [local-run5]="--strategies local --set window=100 --set hyper_etas=null --set local_options={\"anchor\":\"run\",\"reanchor_every\":5}"
    [glocal-run-guard3]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":null,\"untrusted\":\"guard\"} --set max_ratio=3"
    [glocal-run-guard1.5]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":null,\"untrusted\":\"guard\"} --set max_ratio=1.5"
    [glocal-run-guard1]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":null,\"untrusted\":\"guard\"} --set max_ratio=1"
    [glocal-run5-guard1]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":5,\"untrusted\":\"guard\"} --set max_ratio=1"
    [glocal-run10-guard1]="--strategies glocal --set window=100 --set hyper_etas=null --set glocal_options={\"reanchor_every\":10,\"untrusted\":\"guard\"} --set max_ratio=1"
    # shorter windows (more, smaller-horizon updates), for Local and Glocal alike
    [glocal-w20]="--strategies glocal --set window=20 --set hyper_etas=null --set glocal_options={\"reanchor_every\":5}"
    [local-w20]="--strategies local --set window=20 --set hyper_etas=null"
    [glocal-w50]="--strategies glocal --set window=50 --set hyper_etas=null --set glocal_options={\"reanchor_every\":5}"
    [local-w50]="--strategies local --set window=50 --set hyper_etas=null"
    [glocal-w20-r25]="--strategies glocal --set window=20 --set hyper_etas=null --set glocal_options={\"reanchor_every\":25}"
    # adaptive per-coordinate rates in RelativeSGD (etas: grow on sign agreement, shrink on a flip), capped at max_rate
    [glocal-w20-rp]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=1.0 --set glocal_options={\"reanchor_every\":5}"
    [glocal-w100-rp15]="--strategies glocal --set window=100 --set hyper_etas=[1.5,0.5] --set max_rate=1.0 --set glocal_options={\"reanchor_every\":5}"
    [glocal-w20-rp-c3]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.3 --set glocal_options={\"reanchor_every\":5}"
    [local-w20-rp-c3]="--strategies local --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.3"
    [glocal-w20-rp-c2]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.2 --set glocal_options={\"reanchor_every\":5}"
    [local-w20-rp-c2]="--strategies local --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.2"
    [glocal-w50-rp-c3]="--strategies glocal --set window=50 --set hyper_etas=[1.2,0.5] --set max_rate=0.3 --set glocal_options={\"reanchor_every\":5}"
    # ... with Glocal's trajectory re-anchored every 10 windows (recording every 2 steps), every 25 or
    # never (a longer realised horizon)
    [glocal-w20-rp-c2-r10-rec2]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.2 --set record_every=2 --set glocal_options={\"reanchor_every\":10}"
    [glocal-w20-rp-c2-r25]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.2 --set glocal_options={\"reanchor_every\":25}"
    [glocal-w20-rp-c2-rinf]="--strategies glocal --set window=20 --set hyper_etas=[1.2,0.5] --set max_rate=0.2 --set glocal_options={\"reanchor_every\":null}"
)
labels=("$@")
[ ${#labels[@]} -eq 0 ] && labels=("${!VARIANTS[@]}")
for label in "${labels[@]}"; do
    args="${VARIANTS[$label]:?unknown variant $label; known: ${!VARIANTS[*]}}"
    # shellcheck disable=SC2086  # the settings are split into arguments on purpose
    "$PYTHON" benchmarks/bench_suite.py --tasks "${TASKS:-$SUITE}" $args --label "$label" --json "$JSON" --no-reference
done
