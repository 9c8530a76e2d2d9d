#!/usr/bin/env bash
# The project's GPU check: the GPU numbers of BENCHMARKS.md on one CUDA GPU in under 8 minutes, with this project's
# public commands only (nnunetv2_uc doctor / bench / synth, nnUNetv2_plan_and_preprocess, nnUNetv2_train).
#
# Usage: scripts/gpu_check.sh [--smoke]
#   --smoke  tiny sizes on CPU, two networks, nnUNetTrainerUC_demo for 60 s instead of the _tiny trainers, no
#            compiled step, 5x the step limits (tests the script; its numbers mean nothing)
# Settings (environment, defaults in brackets):
#   OUT [/tmp/out]          must be empty or absent: log.txt, steps.tsv, one JSON per measurement, logs/,
#                           and summary.md (paste it into BENCHMARKS.md) + summary.json
#   BUDGET_S [450]          seconds for all steps; a step gets at most the time left, steps past it are listed
#                           as skipped, so the check ends in under 8 minutes
#   PATCH ["48 224 224"]    patch of the training steps and of inference: nnU-Net plans 40x224x224 (batch 2) for a
#                           512x512x100 CT at 2.5x0.8x0.8 mm; the plugin's trainers round it up to multiples of 16
#   VOLUME ["100 512 512"]  inference volume;  REPEATS [3]  timed training steps per measurement (median)
# Steps, in this order (what is cut by the budget comes last): doctor; training step of the four networks (fp16
# AMP, batch 2, depthwise share from the profiler); nnUNetv2_train of nnUNetTrainerUC_tiny and
# nnUNetTrainerUXNet_tiny (AMP + torch.compile, nnU-Net's CUDA defaults) on `nnunetv2_uc synth` data, side by side
# with the peak memory at batch 2 x 128^3; inference of VOLUME with 1 and 4 tiles per network call; layouts
# (NNUNETV2_UC_LAYOUT=contiguous, --channels-last) and NNUNETV2_UC_FAST_PATHS=all; compiled training steps.
# Needs nnunetv2-uc installed (make install) with its commands on PATH.
set -uo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

smoke=0
case "${1:-}" in
    --smoke) smoke=1 ;;
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; echo "error: unknown argument $1" >&2; exit 2 ;;
esac
OUT="${OUT:-/tmp/out}"
if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
    echo "error: OUT=$OUT is not empty; give an empty or new folder (the check never overwrites results)" >&2
    exit 2
fi
for command in nnunetv2_uc nnUNetv2_train nnUNetv2_plan_and_preprocess; do
    if ! command -v "$command" >/dev/null; then
        echo "error: $command not on PATH: activate the environment with nnunetv2-uc" >&2
        exit 2
    fi
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="$(dirname "$(command -v nnunetv2_uc)")/python"
[[ -x "$PYTHON" ]] || PYTHON=python3
mkdir -p "$OUT/logs"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1

if [[ $smoke -eq 1 ]]; then  # CPU: nnU-Net does not compile there either, and a CPU compile takes minutes
    device=cpu amp=off patch="${PATCH:-16 32 32}" memory_patch="32 32 32" volume="${VOLUME:-24 48 48}"
    repeats="${REPEATS:-1}" budget="${BUDGET_S:-2400}" cases=5 n_proc_da=1 train_device="-device cpu" cap_scale=5
    nets="uc3dunet plainunet" trainers="nnUNetTrainerUC_demo" compiled_nets=""
    # the demo trainer's fixed schedule takes ~10 min on 2 cores: bound it to 60 s, fewer iterations per epoch
    export NNUNETV2_UC_DEMO_SECONDS_LEFT=60 NNUNETV2_UC_DEMO_WHEN_SHORT=fewer
else
    device=cuda amp=fp16 patch="${PATCH:-48 224 224}" memory_patch="128 128 128" volume="${VOLUME:-100 512 512}"
    repeats="${REPEATS:-3}" budget="${BUDGET_S:-450}" cases=8 n_proc_da=4 train_device="" cap_scale=1
    nets="plainunet resenc_m uc3dunet uxnet" trainers="nnUNetTrainerUC_tiny nnUNetTrainerUXNet_tiny"
    compiled_nets="plainunet uc3dunet uxnet"
fi
only() {  # the networks of $nets that are among $1
    local keep=" $1 " out=() n
    for n in $nets; do [[ $keep == *" $n "* ]] && out+=("$n"); done
    echo "${out[*]}"
}
read -r -a all_nets <<< "$nets"
read -r -a our_nets <<< "$(only "uxnet uc3dunet")"
read -r -a nnunet_nets <<< "$(only "plainunet resenc_m")"
dataset=990
bench=(nnunetv2_uc bench --device "$device" --amp "$amp")
read -r -a patch_args <<< "$patch"
read -r -a memory_args <<< "$memory_patch"
read -r -a volume_args <<< "$volume"

export nnUNet_raw="$OUT/nnunet/raw" nnUNet_preprocessed="$OUT/nnunet/preprocessed" nnUNet_results="$OUT/nnunet/results"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
eval "$(nnunetv2_uc env)"

start=$SECONDS
deadline=$((start + budget))
printf 'step\tstatus\tseconds\tlimit_s\n' > "$OUT/steps.tsv"
pids="$OUT/logs/.step_pids"
: > "$pids"
# `timeout` runs each step in a process group of its own: end those too if the check itself is stopped
trap 'trap - TERM INT; while read -r p; do kill -TERM -- "-$p" 2>/dev/null; done < "$pids"; exit 143' TERM INT
{
    printf '{"smoke": %s, "device": "%s", "amp": "%s", "patch": "%s", "memory_patch": "%s", "volume": "%s", ' \
        "$([[ $smoke -eq 1 ]] && echo true || echo false)" "$device" "$amp" "$patch" "$memory_patch" "$volume"
    printf '"networks": "%s", "repeats": %s, "budget_s": %s, "commit": "%s", "started": "%s"}\n' \
        "$nets" "$repeats" "$budget" "$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$OUT/meta.json"

skip() {  # NAME REASON
    printf '%s\tskipped (%s)\t0\t0\n' "$1" "$2" >> "$OUT/steps.tsv"
    echo "=== [$((SECONDS - start)) s] $1: skipped ($2)"
}

step() {  # NAME CAP_S COMMAND...: run with the smaller of CAP_S and the budget left; log to logs/NAME.log
    local name=$1 cap=$(($2 * cap_scale)); shift 2
    local left=$((deadline - SECONDS)) t0=$SECONDS status rc
    if (( left < 20 )); then
        skip "$name" "budget spent"
        return 1
    fi
    local limit=$(( cap < left ? cap : left ))
    echo "=== [$((SECONDS - start)) s] $name (limit $limit s): $*"
    timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 &
    local pid=$!
    echo "$pid" >> "$pids"
    wait "$pid"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out at $limit s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$limit" >> "$OUT/steps.tsv"
    echo "--- $name: $status after $((SECONDS - t0)) s"
    tail -n 4 "$OUT/logs/$name.log" | sed 's/^/    /'
    return $rc
}

# 1. the installation as nnU-Net will see it (summary.md lists its GPU lines and every line that is not ok)
step doctor 120 bash -c 'nnunetv2_uc doctor --json > "$0/doctor.json"' "$OUT"

# training data for step 3, prepared on the CPU while the GPU measures step 2
step data 240 bash -c "nnunetv2_uc synth --dataset-id $dataset --cases $cases --test-cases 0 --seed 0 && \
    nnUNetv2_plan_and_preprocess -d $dataset -c 3d_fullres -np 4" &
data_job=$!

# 2. training step of the four networks at PATCH, batch 2, with the depthwise-conv share of each step
step step_eager 180 "${bench[@]}" --network "${all_nets[@]}" --patch "${patch_args[@]}" --batch 2 \
    --repeats "$repeats" --profile-depthwise --json "$OUT/step_eager.json"

# 3. nnU-Net's own training (its CUDA defaults: fp16 AMP and torch.compile) of both trainers, side by side with the
#    peak-memory measurement (torch.cuda.max_memory_allocated is per process, so sharing the GPU does not change it)
train_jobs=()
if wait "$data_job"; then
    for trainer in $trainers; do
        # shellcheck disable=SC2086
        step "train_$trainer" 240 env nnUNet_n_proc_DA=$n_proc_da \
            nnUNetv2_train $dataset 3d_fullres 0 -tr "$trainer" $train_device &
        train_jobs+=($!)
    done
else
    for trainer in $trainers; do skip "train_$trainer" "no training data: see logs/data.log"; done
fi
step memory128 150 "${bench[@]}" --network "${all_nets[@]}" --patch "${memory_args[@]}" --batch 2 --repeats 1 \
    --json "$OUT/memory128.json"
for job in "${train_jobs[@]}"; do wait "$job"; done

# 4. inference of VOLUME at nnU-Net's defaults (step 0.5, Gaussian, mirroring), 1 and 4 tiles per network call
for tiles in 1 4; do
    for net in "${all_nets[@]}"; do
        step "infer${tiles}_$net" 150 "${bench[@]}" --network "$net" --patch "${patch_args[@]}" \
            --volume "${volume_args[@]}" --inference-only --patches-per-batch "$tiles" --repeats 1 \
            --json "$OUT/infer${tiles}_$net.json"
    done
done

# 5. layouts and the CPU fast paths on this device (our networks: a switch; nnU-Net's: --channels-last)
step layout_ours_contiguous 120 env NNUNETV2_UC_LAYOUT=contiguous "${bench[@]}" --network "${our_nets[@]}" \
    --patch "${patch_args[@]}" --batch 2 --repeats "$repeats" --json "$OUT/layout_ours_contiguous.json"
step layout_nnunet_channels_last 120 "${bench[@]}" --network "${nnunet_nets[@]}" --channels-last \
    --patch "${patch_args[@]}" --batch 2 --repeats "$repeats" --json "$OUT/layout_nnunet_channels_last.json"
step fast_paths_all 120 env NNUNETV2_UC_FAST_PATHS=all "${bench[@]}" --network "${our_nets[@]}" \
    --patch "${patch_args[@]}" --batch 2 --repeats "$repeats" --json "$OUT/fast_paths_all.json"

# 6. compiled training steps (one run per network: a compile that outlasts the budget loses only its own row)
[[ -n "$compiled_nets" ]] || skip compiled "smoke run: no compiling on CPU"
for net in $compiled_nets; do
    step "compiled_$net" 240 "${bench[@]}" --network "$net" --compile --patch "${patch_args[@]}" --batch 2 \
        --repeats "$repeats" --json "$OUT/compiled_$net.json"
done

echo "=== [$((SECONDS - start)) s] summary"
printf '%s\n' "$((SECONDS - start))" > "$OUT/total_seconds"
"$PYTHON" "$HERE/gpu_check_summary.py" "$OUT"
