#!/usr/bin/env bash
# Every table and figure of the report, unattended:
#
#   bash run_all.sh                          the whole grid on this machine's GPU, then aggregate.py
#   bash run_all.sh --gpus 0,1,2,3           one worker per GPU, sharing one queue of cells
#   bash run_all.sh --gpus 0 --per-gpu 4     four cells at a time on GPU 0 (LeNet leaves a GPU nearly idle)
#   bash run_all.sh --slurm --sbatch "--partition=gpu --gres=gpu:1 --time=24:00:00"
#                                            one SLURM job array (one task per cell) + an aggregation job
#   bash run_all.sh --quick                  every cell with a tiny budget (1 epoch, 256 samples, 1 trial)
#                                            into results/quick/: checks the pipeline, not results
#
# The grid (report sections 4-5; defined once in grid.py): the two synthetic experiments; then for
# MNIST (LeNet-5), CIFAR-10 and CIFAR-100 (ResNet-50) the losses CE, CE + clipping (0.1), linear,
# GCE (q 0.7), PHuber-CE (tau 10; tau 2 on CIFAR-10) and PHuber-GCE (tau 10, q 0.7), and on CIFAR-100
# also PHuber-CE tau 50, at rho in {0, 0.2, 0.4, 0.6} x 3 trials (seeds 0, 1, 2): 2 + 72 + 72 + 84 cells.
#
# Options:
#   --datasets LIST   comma-separated, of synthetic, mnist, fashion-mnist, cifar10, cifar100
#                     (default: synthetic,mnist,cifar10,cifar100)
#   --losses LIST     keep these losses (ce, ce+clip, linear, gce, phuber_ce, phuber_gce); another loss
#                     of losses.py (e.g. sce, nce_rce) is added with its default parameters
#   --rhos LIST       noise rates (default: 0,0.2,0.4,0.6)      --trials N   seeds 0..N-1 (default: 3)
#   --out DIR         results folder (default: results, or results/quick with --quick)
#   --list            print the numbered grid, and its time estimate on stderr, and exit
#   --task I          run cell I only               --dry-run   print the commands instead of running them
#   --gpus LIST       one worker per listed GPU id (ids index CUDA_VISIBLE_DEVICES when it is set)
#   --per-gpu K       K workers per GPU of --gpus, one queue (at most a CPU core per cell; not with --slurm)
#   --cpu-workers N   N cells at a time on the CPU (each with OMP_NUM_THREADS = cores / N unless set);
#                     pass -- --device cpu on a machine with a GPU
#   --slurm           submit as a job array; --sbatch "OPTIONS" passes options to sbatch
#   --table3          the report's Table 3: CE and PHuber-GCE at rho 0.6 on MNIST and CIFAR-100 with label
#                     noise seeds 0-3, 3 trials each (48 cells; seed 0's are the main grid's runs)
#   --memorisation    the CPU-scale memorisation benchmark (docs/memorisation.md): Fashion-MNIST and
#                     MNIST, LeNet, constant learning rate, no weight decay, 30 epochs, 9 losses,
#                     rho 0/0.4/0.6, 3 trials, into OUT/memorisation
#   --human-noise     CIFAR-10N (aggre_label, random_label1, worse_label) and CIFAR-100N (noisy_label)
#                     instead of rho, the report's losses, 3 trials; the CIFAR-N files go in the data
#                     folder (docs/noise.md): -- --data-dir DIR
#   --logit-clip D    every selected loss behind LogitClip at norm D (docs/logitclip.md)
#   --taus LIST       run the losses that have a tau at each of these values instead (a tau sweep)
#   --tune-tau        the original paper's protocol: first, per dataset and loss with a tau, train
#                     with each --tau-candidates value (default 2,10) at the highest rho, --val-split
#                     (default 0.1) of the noisy training set held out (into OUT/tuning); then the grid
#                     with the tau of best noisy-validation accuracy (the test set plays no part)
#   --tune            the fair comparison (docs/tuning.md): every candidate of each loss's parameter
#                     (grid.TUNE: CE + clipping, GCE, PHuber-CE, PHuber-GCE, CE + LogitClip; CE untuned)
#                     at every rho and trial, --val-split held out, into OUT/tune; aggregate.py chooses
#                     per rho on noisy validation accuracy (final epoch, and stopped early) and writes
#                     tables/<dataset>_tuned.*. With --memorisation: the 2-core CPU study (Fashion-MNIST,
#                     memorisation regime, 5,000 training samples, 20 epochs)
#   -- ARGS           everything after -- goes to every training script (e.g. -- --amp fp16)
#
# Before any cell runs, the training scripts check the flags after -- and each dataset's files: a bad
# flag stops everything (exit 2); a dataset whose files are missing is skipped with the files it needs.
# Idempotent: a finished cell is skipped, an interrupted one resumes from its checkpoint, results are
# written atomically and never duplicated. Each cell logs to OUT/logs/<cell>.log; a line before each
# says where the grid stands (cell k/N, counts, elapsed time, ETA of the dataset). Ctrl-C or SIGTERM
# stops every worker and its cell; rerun the same command to resume. Paths are relative to the
# directory you run it from. Exit status: 0 when every cell ran or was already done and aggregate.py
# succeeded, 1 when anything failed, 2 for bad input, 130/143 when interrupted.
set -euo pipefail
PYTHON=${PYTHON:-python}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for arg in "$@"; do  # --help before -- is ours; after it, a training script's
    [[ $arg == -- ]] && break
    [[ $arg == -h || $arg == --help ]] && { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; }
done
command -v "$PYTHON" >/dev/null ||
    { echo "run_all.sh: PYTHON '$PYTHON' is not a command (set PYTHON or put python on PATH)" >&2; exit 2; }
export PYTHON
exec "$PYTHON" "$here/runner.py" "$@"
