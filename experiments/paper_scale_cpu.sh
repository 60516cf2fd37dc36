#!/usr/bin/env bash
# The paper-scale CPU job (Table 1 at --scale 1.0 with a second seed of the headline pair,
# and Figure 3 over 8 epochs), in the order that matters most: the headline first.
#
#   git worktree add ../clr-long <commit> && cd ../clr-long
#   nice -n 19 bash experiments/paper_scale_cpu.sh PATH/TO/cifar10-jpg.tar.gz > paper_scale.log 2>&1 &
#
# Every step resumes from its checkpoints (every 5,000 iterations) when run again, and
# finished policies are not run again. Results: experiments/results/table1_paper/<run>/
# and experiments/results/figure3_range_test_paper.json.
set -uo pipefail
# With autogroup scheduling (most Linux desktops and VMs) nice only ranks processes
# within one session; lower this session's whole group too, so interactive work wins.
echo 19 2>/dev/null > /proc/self/autogroup || true
cd "$(dirname "$0")/.."
data=${1:?give the CIFAR-10 archive}
out=experiments/results/table1_paper
table1() { python experiments/table1_cifar10.py --data "$data" --scale 1.0 --out "$out" --no-progress "$@"; }

table1 --policies fixed,triangular2
[ -f experiments/results/figure3_range_test_paper.json ] ||
  python experiments/figure3_range_test.py --data "$data" --scale paper --no-progress
table1 --policies fixed,triangular2 --seed 1
table1 --policies exp_range_amplitude,exp_range_both,decay,exp,triangular
echo "paper_scale_cpu: done"
