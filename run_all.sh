#!/usr/bin/env bash
# Every table and figure of the report, unattended:
#
#   bash run_all.sh                          the whole grid on this machine's GPU, then aggregate.py
#   bash run_all.sh --gpus 0,1,2,3           one worker per GPU, cells shared out without overlap
#   bash run_all.sh --slurm --sbatch "--partition=gpu --gres=gpu:1 --time=24:00:00"
#                                            one SLURM job array (one task per cell) + an aggregation job
#   bash run_all.sh --quick                  every cell with a tiny budget (1 epoch, 256 samples, 1 trial)
#                                            into results/quick/: checks the pipeline, not results
#
# The grid (report sections 4-5): the two synthetic experiments; then for MNIST (LeNet-5), CIFAR-10
# and CIFAR-100 (ResNet-50) the losses CE, CE + clipping (0.1), linear, GCE (q 0.7), PHuber-CE
# (tau 10; tau 2 on CIFAR-10) and PHuber-GCE (tau 10, q 0.7), and on CIFAR-100 also PHuber-CE tau 50,
# at rho in {0, 0.2, 0.4, 0.6} x 3 trials (seeds 0, 1, 2): 2 + 72 + 72 + 84 cells.
#
# Options:
#   --datasets LIST   comma-separated, of synthetic, mnist, fashion-mnist, cifar10, cifar100
#                     (default: synthetic,mnist,cifar10,cifar100)
#   --losses LIST     keep these losses (ce, ce+clip, linear, gce, phuber_ce, phuber_gce); any other
#                     loss of losses.py (e.g. sce, nce_rce) is added with its default parameters
#   --rhos LIST       noise rates (default: 0,0.2,0.4,0.6)      --trials N   seeds 0..N-1 (default: 3)
#   --out DIR         results folder (default: results, or results/quick with --quick)
#   --list            print the numbered grid and exit          --task I     run cell I only
#   --dry-run         print the commands instead of running them
#   --gpus LIST       one worker per listed GPU (CUDA_VISIBLE_DEVICES)
#   --slurm           submit as a job array; --sbatch "OPTIONS" passes options to sbatch
#   --taus LIST       run the losses that have a tau at each of these values instead (a tau sweep)
#   --tune-tau        the original paper's protocol: first, for each dataset and loss with a tau,
#                     train with every --tau-candidates value (default 2,10) at the highest rho with
#                     --val-split (default 0.1) of the noisy training set held out (into OUT/tuning);
#                     then the grid with, per dataset and loss, the tau of best noisy-validation
#                     accuracy (aggregate.py --choose-tau; the test set plays no part)
#   -- ARGS           everything after -- goes to every training script (e.g. -- --amp bf16)
#
# Idempotent: a finished cell is skipped, an interrupted one resumes from its checkpoint (--resume),
# results are written atomically and never duplicated. Each cell logs to OUT/logs/<cell>.log. The
# final summary says which cells ran, were already done, skipped (data unavailable) or failed.
set -uo pipefail
shopt -s extglob
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

datasets=synthetic,mnist,cifar10,cifar100 losses="" rhos=0,0.2,0.4,0.6 trials=3 out="" quick=0
list=0 task="" dry=0 gpus="" slurm=0 sbatch_opts="" tune=0 taus="" candidates=2,10 val_split=0.1 extra=()
die() { echo "run_all.sh: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && $2 != --* ]] || die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --datasets) need "$@"; datasets=$2; shift 2 ;;
        --losses) need "$@"; losses=$2; shift 2 ;;
        --rhos) need "$@"; rhos=$2; shift 2 ;;
        --trials) need "$@"; trials=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        --task) need "$@"; task=$2; shift 2 ;;
        --gpus) need "$@"; gpus=$2; shift 2 ;;
        --sbatch) [[ $# -ge 2 ]] || die "--sbatch needs a value"; sbatch_opts=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --list) list=1; shift ;;
        --dry-run) dry=1; shift ;;
        --slurm) slurm=1; shift ;;
        --tune-tau) tune=1; shift ;;
        --taus) need "$@"; taus=$2; shift 2 ;;
        --tau-candidates) need "$@"; candidates=$2; shift 2 ;;
        --val-split) need "$@"; val_split=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $trials =~ ^[1-9][0-9]*$ ]] || die "--trials '$trials' is not allowed: a positive integer"
((quick)) && trials=1
[[ -n $out ]] || { ((quick)) && out=results/quick || out=results; }
for d in ${datasets//,/ }; do
    [[ $d =~ ^(synthetic|mnist|fashion-mnist|cifar10|cifar100)$ ]] ||
        die "--datasets: '$d' is not allowed: use synthetic, mnist, fashion-mnist, cifar10, cifar100"
done
for r in ${rhos//,/ }; do
    [[ $r =~ ^(0(\.[0-9]+)?|\.[0-9]+)$ ]] || die "--rhos: '$r' is not allowed: noise rates in [0, 1)"
done
for t in ${taus//,/ } ${candidates//,/ }; do
    [[ $t =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk "BEGIN{exit !($t > 1)}" || die "tau '$t' is not allowed: tau > 1"
done
[[ -n $taus && $tune == 1 ]] && die "--taus and --tune-tau exclude each other: a sweep fixes tau, tuning chooses it"
[[ $val_split =~ ^0?\.[0-9]*[1-9][0-9]*$ ]] || die "--val-split '$val_split' is not allowed: a fraction in (0, 1)"
max_rho=$(tr , '\n' <<<"$rhos" | sort -g | tail -n 1)
if [[ -n $losses ]]; then
    known_losses=$($PYTHON -c "import losses; print(' '.join(losses.LOSSES))") || die "cannot import losses.py with $PYTHON"
    for l in ${losses//,/ }; do
        [[ " ce+clip $known_losses " == *" $l "* ]] || die "--losses: '$l' is not allowed: use ce+clip or one of $known_losses"
    done
fi

# The paper's loss settings per dataset, as "label:script flags".
variants() {
    local tau=10; [[ $1 == cifar10 ]] && tau=2
    local v=("ce:--loss ce" "ce+clip:--loss ce --clip-norm 0.1" "linear:--loss linear" "gce:--loss gce --q 0.7"
             "phuber_ce:--loss phuber_ce --tau $tau" "phuber_gce:--loss phuber_gce --tau 10 --q 0.7")
    [[ $1 == cifar100 ]] && v+=("phuber_ce:--loss phuber_ce --tau 50")
    local l kept=() label
    for l in ${losses//,/ }; do  # a loss outside the paper's grid is added with its defaults
        [[ " ${v[*]%%:*} " == *" $l "* ]] || v+=("$l:--loss $l")
    done
    for label in "${v[@]}"; do
        [[ -z $losses || ",$losses," == *",${label%%:*},"* ]] || continue
        if [[ ${label#*:} == *--tau* && -n $taus ]]; then  # a sweep: every listed tau instead
            local t; for t in ${taus//,/ }; do kept+=("${label%%--tau*}--tau $t${label##*--tau +([0-9.])}"); done
        elif [[ ${label#*:} == *--tau* ]] && ((tune)); then  # tau chosen at run time, once per loss
            [[ " ${kept[*]} " == *" ${label%%:*}:"* ]] || kept+=("${label%%--tau*}--tau TUNED${label##*--tau +([0-9.])}")
        else
            kept+=("$label")
        fi
    done
    printf '%s\n' "${kept[@]}" | awk '!seen[$0]++'
}

# One line per cell: "id|dataset|command". The numbering depends only on the filters, so a SLURM
# array task given the same filters finds the same cell.
grid() {
    local d v r s script flags t
    ((tune)) && for d in ${datasets//,/ }; do  # phase 1 of --tune-tau: the candidates, noisy validation
        [[ $d == synthetic ]] && continue
        script=$(script_for "$d")
        while IFS= read -r v; do
            [[ $v == *"--tau TUNED"* ]] || continue
            for t in ${candidates//,/ }; do
                flags=${v#*:}
                echo "tune-$d-${v%%:*}-tau$t-rho$max_rho-seed0|$d|$PYTHON $script --dataset $d ${flags/TUNED/$t} --rho $max_rho --seed 0 --val-split $val_split --out $out/tuning --resume$(quick_flags)"
            done
        done < <(variants "$d")
    done
    for d in ${datasets//,/ }; do
        if [[ $d == synthetic ]]; then
            local n=500; ((quick)) && n=20
            echo "synthetic-long_servedio|synthetic|$PYTHON synthetic_long_servedio.py --trials $n --out $out/synthetic"
            echo "synthetic-ding|synthetic|$PYTHON synthetic_ding.py --out $out/synthetic"
            continue
        fi
        script=$(script_for "$d")
        while IFS= read -r v; do
            [[ -n $v ]] || continue
            flags=${v#*:}
            for r in ${rhos//,/ }; do
                for ((s = 0; s < trials; s++)); do
                    local id="$d-${v%%:*}$(sed -E 's/.*--tau ([0-9.]+|TUNED).*/-tau\1/;t;d' <<<"$flags")-rho$r-seed$s"
                    echo "${id/tauTUNED/tuned}|$d|$PYTHON $script --dataset $d $flags --rho $r --seed $s --out $out --resume$(quick_flags)"
                done
            done
        done < <(variants "$d")
    done
}

script_for() { [[ $1 == *mnist ]] && echo train_mnist.py || echo train_cifar.py; }
quick_flags() { ((quick)) && echo " --epochs 1 --limit-train 256 --limit-test 256"; }

mapfile -t cells < <(grid)
((${#cells[@]})) || die "the filters select no cell"
n_tuning=$(printf '%s\n' "${cells[@]}" | grep -c '^tune-')

if ((list)); then
    for i in "${!cells[@]}"; do printf '%4d  %s\n' "$i" "${cells[$i]%%|*}"; done
    exit 0
fi

status_dir=$(mktemp -d); trap 'rm -rf "$status_dir"' EXIT
mkdir -p "$out/logs"

# Run cell $1: skip it if the dataset is unavailable, log to its own file, record the outcome.
run_cell() {
    local id=${cells[$1]%%|*} rest=${cells[$1]#*|}
    local dataset=${rest%%|*} cmd=${rest#*|}
    local log="$out/logs/$id.log"
    if ((dry)); then echo "$cmd${extra[*]:+ ${extra[*]}}"; return; fi
    if [[ -f $status_dir/unavailable-$dataset ]]; then
        echo "$id" >>"$status_dir/skipped"; return
    fi
    if [[ $dataset == synthetic && -f "$out/synthetic/${id#synthetic-}.csv" ]]; then
        echo "$id" >>"$status_dir/done"; return
    fi
    local args=()
    [[ $dataset != synthetic ]] && args=("${extra[@]}")
    echo "[$(date +%H:%M:%S)] cell $1: $id"
    if [[ $cmd == *"--tau TUNED"* ]]; then  # the tau of the best noisy-validation accuracy
        local loss chosen
        loss=$(sed -E 's/.*--loss ([a-z_]+).*/\1/' <<<"$cmd")
        if ! chosen=$($PYTHON aggregate.py --results "$out/tuning" --choose-tau --dataset "$dataset" \
                --loss "$loss" --candidates "$candidates" 2>"$log"); then
            echo "    FAILED: no tau chosen yet (the tuning cells must finish first): see $log"
            echo "$id ($log)" >>"$status_dir/failed"; return
        fi
        cmd=${cmd/TUNED/$chosen}
    fi
    if $cmd "${args[@]}" >"$log" 2>&1; then
        grep -q "already finished" "$log" && echo "$id" >>"$status_dir/done" || echo "$id" >>"$status_dir/ran"
    else
        echo "    FAILED (exit $?): see $log"
        echo "$id ($log)" >>"$status_dir/failed"
    fi
}

# Data first: an unavailable dataset is reported once and its cells are skipped.
check_data() {
    local d script
    for d in $(printf '%s\n' "${cells[@]}" | cut -d'|' -f2 | sort -u); do
        [[ $d == synthetic ]] && continue
        script=$(script_for "$d")
        if ! msg=$($PYTHON $script --dataset "$d" --prepare-data "${extra[@]}" 2>&1); then
            echo "skipping $d: $(tail -n 1 <<<"$msg")"
            touch "$status_dir/unavailable-$d"
        fi
    done
}

if ((slurm)); then
    command -v sbatch >/dev/null || die "--slurm: sbatch not found"
    filters=(--datasets "$datasets" --rhos "$rhos" --trials "$trials" --out "$out")
    [[ -n $losses ]] && filters+=(--losses "$losses")
    ((quick)) && filters+=(--quick)
    ((tune)) && filters+=(--tune-tau --tau-candidates "$candidates" --val-split "$val_split")
    [[ -n $taus ]] && filters+=(--taus "$taus")
    worker="bash run_all.sh ${filters[*]} --task \$SLURM_ARRAY_TASK_ID${extra[*]:+ -- ${extra[*]}}"
    mkdir -p "$out/logs"
    after=()
    if ((n_tuning)); then  # --tune-tau: the grid's array waits for every tuning cell to succeed
        # shellcheck disable=SC2086
        tuning=$(sbatch --parsable --job-name=phuber-tune --array=0-$((n_tuning - 1)) $sbatch_opts \
            --output="$out/logs/slurm-%A_%a.out" --chdir="$PWD" --wrap "$worker") || die "sbatch failed"
        after=(--dependency=afterok:"${tuning%%;*}")
        echo "submitted tuning array ${tuning%%;*} ($n_tuning cells)"
    fi
    # shellcheck disable=SC2086
    job=$(sbatch --parsable --job-name=phuber --array=$n_tuning-$((${#cells[@]} - 1)) "${after[@]}" $sbatch_opts \
        --output="$out/logs/slurm-%A_%a.out" --chdir="$PWD" --wrap "$worker") || die "sbatch failed"
    job=${job%%;*}
    # shellcheck disable=SC2086
    agg=$(sbatch --parsable --job-name=phuber-aggregate --dependency=afterany:"$job" $sbatch_opts \
        --output="$out/logs/slurm-aggregate-%j.out" --chdir="$PWD" --wrap "$PYTHON aggregate.py --results $out") ||
        die "sbatch of the aggregation job failed"
    echo "submitted job array $job ($((${#cells[@]} - n_tuning)) cells) and aggregation job ${agg%%;*} (runs when the array ends)"
    exit 0
fi

if [[ -n $task ]]; then
    [[ $task =~ ^[0-9]+$ ]] && ((task < ${#cells[@]})) || die "--task '$task' is not allowed: 0 to $((${#cells[@]} - 1))"
    ((dry)) || check_data
    run_cell "$task"
    [[ -f $status_dir/failed ]] && exit 1
    [[ -f $status_dir/skipped ]] && exit 3
    exit 0
fi

# Run cells $1..$2-1, shared out over the GPUs without overlap (or here, one after the other).
run_range() {
    if [[ -n $gpus ]]; then
        IFS=, read -ra gpu_list <<<"$gpus"
        for k in "${!gpu_list[@]}"; do
            (
                export CUDA_VISIBLE_DEVICES=${gpu_list[$k]}
                for ((i = $1 + k; i < $2; i += ${#gpu_list[@]})); do run_cell "$i"; done
            ) &
        done
        wait
    else
        for ((i = $1; i < $2; i++)); do run_cell "$i"; done
    fi
}

((dry)) || check_data
run_range 0 "$n_tuning"       # --tune-tau: every candidate finishes before a tau is chosen
run_range "$n_tuning" "${#cells[@]}"
((dry)) && exit 0

count() { [[ -f $status_dir/$1 ]] && wc -l <"$status_dir/$1" || echo 0; }
echo "summary: $(count ran) ran, $(count done) already finished, $(count skipped) skipped (data unavailable), $(count failed) failed"
[[ -f $status_dir/failed ]] && sed 's/^/  failed: /' "$status_dir/failed"
if [[ -z $task ]]; then
    $PYTHON aggregate.py --results "$out" || echo "aggregate.py failed"
fi
[[ -f $status_dir/failed ]] && exit 1
exit 0
