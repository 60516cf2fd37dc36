#!/usr/bin/env bash
# The CPU job of Table 3 (adaptive optimizers) and "which schedule at 25,000 iterations",
# in the order that matters most: Table 3's Adam and Nesterov rows, the schedules beside
# CLR (seed 0), then Table 3's other rows, shortest first.
#
#   git worktree add ../clr-long <commit> && cd ../clr-long
#   nice -n 19 bash experiments/adaptive_and_schedules_cpu.sh PATH/TO/cifar10-jpg.tar.gz > long.log 2>&1 &
#
# Every run resumes from its checkpoints (every 5,000 iterations) when run again, and
# finished runs are not run again. Results: experiments/results/table3_paper/<run>/ and
# experiments/results/schedules_25k/<run>/.
set -uo pipefail
echo 19 2>/dev/null > /proc/self/autogroup || true
cd "$(dirname "$0")/.."
data=${1:?give the CIFAR-10 archive}
table3() { python experiments/table3_optimizers.py --data "$data" --no-progress --runs "$1"; }

table3 adam-fixed,adam-triangular,nesterov-fixed,nesterov-triangular
python experiments/schedules_25k.py --data "$data" --no-progress
table3 adagrad-fixed,adagrad-triangular,adadelta-fixed,adadelta-triangular,rmsprop-fixed,rmsprop-triangular
echo "adaptive_and_schedules_cpu: done"
