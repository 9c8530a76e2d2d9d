#!/usr/bin/env bash
# SLURM job-array template: one nnU-Net fold per array task, one GPU each. Edit the #SBATCH lines and paths.
#
#   sbatch --export=ALL,DATASET=4,TRAINER=nnUNetTrainerUC,CONFIG=3d_fullres scripts/slurm_train_5fold.sh
# After all five tasks finish (e.g. a dependent job: sbatch --dependency=afterok:<jobid> ...), run
#   nnUNetv2_find_best_configuration $DATASET -c $CONFIG -tr $TRAINER
# A task that hit the time limit resumes from its last checkpoint when resubmitted (--c below).
# For one fold on several GPUs of one node, use nnU-Net's DDP: nnUNetv2_train ... -num_gpus N
#SBATCH --job-name=nnunet-uc
#SBATCH --array=0-4
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=12
#SBATCH --mem=64G
#SBATCH --time=48:00:00
#SBATCH --output=nnunet-uc-%A_%a.log
set -euo pipefail

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
nnUNetv2_train "$DATASET" "$CONFIG" "$fold" -tr "$TRAINER" --npz --c
