#!/usr/bin/env bash
# SLURM job-array template: one nnU-Net fold per array task, one GPU each. Edit the #SBATCH lines and paths.
#
#   sbatch --export=ALL,DATASET=4,TRAINER=nnUNetTrainerUC,CONFIG=3d_fullres scripts/slurm_train_5fold.sh
# After all five tasks finish (e.g. a dependent job: sbatch --dependency=afterok:<jobid> ...), run
#   nnUNetv2_find_best_configuration $DATASET -c $CONFIG -tr $TRAINER
# Time limit and preemption: SLURM sends USR1 120 s before the limit (--signal=B:USR1@120, to this script, which
# forwards it to nnUNetv2_train). The plugin's trainers then finish the current iteration, write
# checkpoint_latest.pth and exit with 85; this script requeues the task (scontrol requeue) and the requeued task
# resumes with --c from that epoch. A task killed without warning (OOM killer, node failure) resumes from the last
# checkpoint_latest.pth, written at most $NNUNETV2_UC_CHECKPOINT_MINUTES (default 30) minutes plus one epoch before;
# resubmit it (or requeue it by hand).
# For one fold on several GPUs of one node, use nnU-Net's DDP: nnUNetv2_train ... -num_gpus N
#SBATCH --job-name=nnunet-uc
#SBATCH --array=0-4
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=12
#SBATCH --mem=64G
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=nnunet-uc-%A_%a.log
set -euo pipefail

STOPPED_BY_SIGNAL=85  # nnunetv2_uc.trainers.cluster.STOPPED_BY_SIGNAL_EXIT_CODE

: "${DATASET:?pass DATASET via --export}"
: "${TRAINER:=nnUNetTrainerUC}"
: "${CONFIG:=3d_fullres}"
: "${nnUNet_raw:?export nnUNet_raw}" "${nnUNet_preprocessed:?export nnUNet_preprocessed}" "${nnUNet_results:?export nnUNet_results}"

# source /path/to/venv/bin/activate   # the environment with nnunetv2-uc installed
eval "$(nnunetv2_uc env)"              # nnUNet_extTrainer, also needed by nnUNetv2_predict later
# data-augmentation workers: each array task is one fold with its own --cpus-per-task CPUs (tasks that land on the
# same node do not share them), so the fold gets all of them; an nnUNet_n_proc_DA passed via --export is kept
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-${SLURM_CPUS_PER_TASK:-12}}"

fold="${SLURM_ARRAY_TASK_ID:?run as an array job (--array=0-4)}"
job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
job="${job:-${SLURM_JOB_ID:-}}"
echo "[slurm_train_5fold] fold $fold, job $job, restart ${SLURM_RESTART_COUNT:-0}"

# bash runs the training as a child and would only act on a signal after it ends: run it in the background, wait,
# and forward USR1/TERM to it (the trainer stops cleanly on either)
train_pid=""
forwarded=0
forward() {  # signal name
    echo "[slurm_train_5fold] $1 received: asking nnUNetv2_train to checkpoint and stop"
    forwarded=1
    if [[ -n "$train_pid" ]]; then kill -"$1" "$train_pid" 2>/dev/null || true; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# --c: resume from checkpoint_final/latest/best when there is one (nnU-Net starts from scratch when there is none)
nnUNetv2_train "$DATASET" "$CONFIG" "$fold" -tr "$TRAINER" --npz --c &
train_pid=$!
status=0
wait "$train_pid" || status=$?
while [[ $forwarded -eq 1 ]]; do  # wait returned because of the signal: wait for the training's own exit
    forwarded=0
    status=0
    wait "$train_pid" || status=$?
done

if [[ $status -eq $STOPPED_BY_SIGNAL ]]; then
    echo "[slurm_train_5fold] training stopped with checkpoint_latest.pth; requeueing $job (it resumes with --c)"
    scontrol requeue "$job"
    exit 0
fi
exit "$status"
