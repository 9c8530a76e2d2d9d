#!/usr/bin/env bash
# Train folds 0-4 of one trainer with the stock nnUNetv2_train, one fold per visible GPU in parallel
# (queueing when there are fewer GPUs than folds), then run nnUNetv2_find_best_configuration.
#
# Usage: scripts/train_5fold.sh [--dry-run] [--gpus "0 1 2 3"] DATASET TRAINER [CONFIG] [-- EXTRA nnUNetv2_train ARGS]
#   DATASET  dataset id or name;  TRAINER  e.g. nnUNetTrainerUC;  CONFIG  default 3d_fullres
#   --dry-run  print the commands (one per line) instead of running them
#   --gpus     GPU ids to use (default: CUDA_VISIBLE_DEVICES, else all of nvidia-smi -L, else CPU)
# Each fold runs as `CUDA_VISIBLE_DEVICES=<gpu> nnUNet_n_proc_DA=<n> nnUNetv2_train D CONFIG FOLD -tr TRAINER --npz`
# and logs to $nnUNet_results/train_5fold_logs/. The folds running side by side share the machine's CPUs, so each
# gets n = (CPUs the job may use: $SLURM_CPUS_PER_TASK, else nproc) / (folds side by side) data-augmentation
# workers, at least 1 and at most 12 (nnU-Net's default per GPU); an nnUNet_n_proc_DA you export is kept.
# For one big fold on several GPUs use nnU-Net's DDP instead:
#   nnUNetv2_train D CONFIG 0 -tr TRAINER -num_gpus N   (batch size must be >= N)
# Rerunning the script resumes: a fold with checkpoint_final.pth and validation/summary.json is skipped, one with
# only checkpoint_final.pth is validated (--val), one with checkpoint_latest/best.pth resumes with --c.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0
gpus="${CUDA_VISIBLE_DEVICES:-}"
positional=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --gpus) gpus="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) positional+=("$1"); shift ;;
    esac
done
if [[ ${#positional[@]} -lt 2 || ${#positional[@]} -gt 3 ]]; then
    usage >&2
    echo "error: give DATASET and TRAINER (and optionally CONFIG)" >&2
    exit 2
fi
dataset="${positional[0]}"; trainer="${positional[1]}"; config="${positional[2]:-3d_fullres}"

if [[ -z "$gpus" ]] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus="$(nvidia-smi -L 2>/dev/null | awk -F'[ :]' '/^GPU/{printf "%s ", $2}')"
fi
gpus="${gpus//,/ }"
read -r -a gpu_list <<< "$gpus"

if [[ $dry_run -eq 0 ]]; then
    if [[ -z "${nnUNet_extTrainer:-}" ]] && command -v nnunetv2_uc >/dev/null 2>&1; then
        eval "$(nnunetv2_uc env)"
    fi
    : "${nnUNet_results:?set nnUNet_results (and nnUNet_raw, nnUNet_preprocessed) first}"
fi

n_slots=${#gpu_list[@]}
if [[ $n_slots -eq 0 ]]; then n_slots=1; fi
side_by_side=$(( n_slots < 5 ? n_slots : 5 ))

# data-augmentation workers per fold: the job's CPUs shared by the folds side by side, 1 .. 12
cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
n_proc_da="${nnUNet_n_proc_DA:-$(( cpus / side_by_side ))}"
if [[ -z "${nnUNet_n_proc_DA:-}" ]]; then
    if (( n_proc_da < 1 )); then n_proc_da=1; fi
    if (( n_proc_da > 12 )); then n_proc_da=12; fi
fi

plans="nnUNetPlans"
find_best="nnUNetv2_find_best_configuration $dataset -c $config -tr $trainer"
for ((i = 0; i < ${#extra[@]}; i++)); do  # the same plans for find_best
    if [[ "${extra[$i]}" == "-p" && $((i + 1)) -lt ${#extra[@]} ]]; then
        plans="${extra[$((i + 1))]}"
        find_best+=" -p $plans"
    fi
done

# the trainer's results folder (nothing when nnUNet_results or the dataset's folder is not there yet)
train_dir=""
if [[ -n "${nnUNet_results:-}" ]]; then
    dataset_name="$dataset"
    if [[ "$dataset" =~ ^[0-9]+$ ]]; then
        dataset_name=""
        for candidate in "$nnUNet_results"/Dataset"$(printf '%03d' "$((10#$dataset))")"_*; do
            if [[ -d "$candidate" ]]; then dataset_name="$(basename "$candidate")"; fi
        done
    fi
    if [[ -n "$dataset_name" ]]; then train_dir="$nnUNet_results/$dataset_name/${trainer}__${plans}__${config}"; fi
fi

fold_state() {  # fold -> done | validate | resume | new
    local dir="$train_dir/fold_$1"
    if [[ -z "$train_dir" ]]; then echo new
    elif [[ -f "$dir/checkpoint_final.pth" && -f "$dir/validation/summary.json" ]]; then echo done
    elif [[ -f "$dir/checkpoint_final.pth" ]]; then echo validate
    elif [[ -f "$dir/checkpoint_latest.pth" || -f "$dir/checkpoint_best.pth" ]]; then echo resume
    else echo new; fi
}

fold_command() {  # fold gpu state
    local prefix=""
    if [[ -n "$2" ]]; then prefix="CUDA_VISIBLE_DEVICES=$2 "; fi
    prefix+="nnUNet_n_proc_DA=$n_proc_da "
    local device=""
    if [[ -z "$2" ]]; then device=" -device cpu"; fi
    local more=""
    case "$3" in
        resume) more=" --c" ;;
        validate) more=" --val" ;;
    esac
    echo "${prefix}nnUNetv2_train $dataset $config $1 -tr $trainer --npz$device${extra[*]:+ ${extra[*]}}$more"
}

if [[ $dry_run -eq 1 ]]; then
    for fold in 0 1 2 3 4; do
        state="$(fold_state "$fold")"
        if [[ "$state" == done ]]; then echo "# fold $fold done (checkpoint_final.pth, validation/summary.json)"; continue; fi
        fold_command "$fold" "${gpu_list[$((fold % n_slots))]:-}" "$state"
    done
    echo "$find_best"
    exit 0
fi

log_dir="$nnUNet_results/train_5fold_logs"
mkdir -p "$log_dir"
declare -A slot_pid=()
failed=0
next_slot=0
for fold in 0 1 2 3 4; do
    state="$(fold_state "$fold")"
    if [[ "$state" == done ]]; then
        echo "[train_5fold] fold $fold is done (checkpoint_final.pth, validation/summary.json): skipped"
        continue
    fi
    slot=$((next_slot % n_slots))
    next_slot=$((next_slot + 1))
    if [[ -n "${slot_pid[$slot]:-}" ]]; then  # queue: wait for this slot's previous fold
        wait "${slot_pid[$slot]}" || failed=1
    fi
    cmd="$(fold_command "$fold" "${gpu_list[$slot]:-}" "$state")"
    echo "[train_5fold] $cmd  (log: $log_dir/${trainer}_${config}_fold$fold.log)"
    bash -c "$cmd" > "$log_dir/${trainer}_${config}_fold$fold.log" 2>&1 &
    slot_pid[$slot]=$!
done
for pid in "${slot_pid[@]}"; do wait "$pid" || failed=1; done
if [[ $failed -ne 0 ]]; then
    echo "[train_5fold] a fold failed or was stopped (exit code 85: stopped on a signal with checkpoint_latest.pth);" \
         "see $log_dir. Rerun this script: it resumes the unfinished folds with --c." >&2
    exit 1
fi
echo "[train_5fold] $find_best"
$find_best
