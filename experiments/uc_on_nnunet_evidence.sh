#!/usr/bin/env bash
# uC on nnU-Net's own network, on the demo's synthetic CT: nnU-Net's default network, the same plan with uC
# connections, and the paper UC3DUNet, trained alike and compared; the two nnU-Net networks once with nnU-Net's SGD
# recipe and once with the paper network's AdamW (README: "uC on nnU-Net's own network").
#
#   experiments/uc_on_nnunet_evidence.sh [WORKDIR]        (default ./uc_evidence; DEVICE=cuda to train on a GPU;
#                                                      EPOCHS=20 ITERATIONS=40 per training, the same for all five;
#                                                      SEED=0: the synthetic data's seed (one WORKDIR per seed);
#                                                      MODELS="sgd adamw paper": which trainings (sgd: nnU-Net's
#                                                      network and its uC version under nnU-Net's recipe; adamw:
#                                                      the same two under AdamW; paper: UC3DUNet; one of the
#                                                      pairs: sgd-plain, sgd-uc, adamw-plain, adamw-uc);
#                                                      CASES=24 TEST_CASES=6: synthetic cases (the smoke test
#                                                      uses fewer);
#                                                      PARALLEL=1 trains the chosen ones at once, which on a CPU
#                                                      shared with other jobs gets them more of it; times are then
#                                                      those of concurrent runs)
#
# Steps (a finished step is skipped when the script runs again):
#   1. nnunetv2_uc synth (24 training + 6 held-out cases, seed SEED), nnUNetv2_plan_and_preprocess -c 3d_fullres
#   2. plans (experiments/uc_plans_by_hand.py): nnUNetPlans_evidence = the 3d_fullres configuration at patch 32x64x64,
#      batch 2, nnU-Net's topology for that patch with widths 8..128 (the paper UC3DUNet at the same patch and batch,
#      widths [8, 16, 32, 64, 128, 8]: a third of the paper's, the demo's CPU width); nnUNetPlans_evidence_UCUNet =
#      the same plans with uC connections and nothing else changed (`nnunetv2_uc plan --network uc_nnunet` would
#      re-plan patch and batch for a GPU); all five train on the same preprocessed data
#   3. nnunetv2_uc cost -d 990 -p nnUNetPlans_evidence (the plan's network, its uC version, the paper networks)
#   4. fold 0 of each model (nnUNetv2_train, EPOCHS x ITERATIONS: experiments/uc_evidence_trainers/), then
#      nnUNetv2_predict of the 6 held-out cases and nnunetv2_uc evaluate of those against labelsTs
#   5. nnunetv2_uc evaluate --nnunet-results: the fold-0 validation compared, with #Params, GMACs, training time
#   6. the held-out table: evaluate's test-set means next to the cost columns of step 5
# Wall and CPU seconds of every training and the load average before and after go to WORKDIR/evidence.log.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(realpath -m "${1:-./uc_evidence}")
DEVICE=${DEVICE:-cpu}
PARALLEL=${PARALLEL:-0}
SEED=${SEED:-0}
CASES=${CASES:-24}
TEST_CASES=${TEST_CASES:-6}
RECIPES=${MODELS:-sgd adamw paper}
export UC_EVIDENCE_EPOCHS=${EPOCHS:-20} UC_EVIDENCE_ITERATIONS=${ITERATIONS:-40}
DATASET=Dataset990_SyntheticCT
BASE_PLANS=nnUNetPlans_evidence
UC_PLANS=nnUNetPlans_evidence_UCUNet
# model name in the comparison (TRAINER or TRAINER__PLANS) -> "trainer plans", per recipe
declare -A RECIPE_MODELS=(
    [sgd-plain]="nnUNetTrainer_evidence:nnUNetTrainer_evidence $BASE_PLANS"
    [sgd-uc]="nnUNetTrainer_evidence__$UC_PLANS:nnUNetTrainer_evidence $UC_PLANS"
    [adamw-plain]="nnUNetTrainerAdamW_evidence:nnUNetTrainerAdamW_evidence $BASE_PLANS"
    [adamw-uc]="nnUNetTrainerAdamW_evidence__$UC_PLANS:nnUNetTrainerAdamW_evidence $UC_PLANS"
    [paper]="nnUNetTrainerUC_evidence:nnUNetTrainerUC_evidence $BASE_PLANS")
RECIPE_MODELS[sgd]="${RECIPE_MODELS[sgd-plain]}|${RECIPE_MODELS[sgd-uc]}"
RECIPE_MODELS[adamw]="${RECIPE_MODELS[adamw-plain]}|${RECIPE_MODELS[adamw-uc]}"
MODELS=()
for recipe in $RECIPES; do
    [ -n "${RECIPE_MODELS[$recipe]+x}" ] || { echo "unknown entry '$recipe' in MODELS (${!RECIPE_MODELS[*]})" >&2; exit 2; }
    IFS='|' read -r -a entries <<< "${RECIPE_MODELS[$recipe]}"
    MODELS+=("${entries[@]}")
done

mkdir -p "$WORK"
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
export nnUNet_compile=${nnUNet_compile:-f} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
eval "$(nnunetv2_uc env)"
export nnUNet_extTrainer="$nnUNet_extTrainer:$HERE/uc_evidence_trainers"
RAW=$nnUNet_raw/$DATASET
PRE=$nnUNet_preprocessed/$DATASET

log() { echo "[evidence $(date '+%F %T') load $(cut -d' ' -f1-3 /proc/loadavg)] $*" | tee -a "$WORK/evidence.log"; }

log "start: $(nproc) cores, device $DEVICE, workdir $WORK, data seed $SEED, models: $RECIPES, $UC_EVIDENCE_EPOCHS epochs x $UC_EVIDENCE_ITERATIONS iterations"
if [ ! -f "$RAW/dataset.json" ]; then
    nice -n 10 nnunetv2_uc synth --dataset-id 990 --cases "$CASES" --test-cases "$TEST_CASES" --seed "$SEED"
fi
if [ ! -f "$PRE/nnUNetPlans.json" ]; then  # nnUNet_n_proc_DA=0 would crash nnU-Net's planning: leave it unset
    nice -n 10 env -u nnUNet_n_proc_DA nnUNetv2_plan_and_preprocess -d 990 -c 3d_fullres -np 2 \
        --verify_dataset_integrity > "$WORK/plan_and_preprocess.log" 2>&1
fi
python "$HERE/uc_plans_by_hand.py" small "$PRE" nnUNetPlans "$BASE_PLANS" --patch 32 64 64 --batch 2 \
    --features 8 16 32 64 128 --uc3dunet-features 8 16 32 64 128 8 > /dev/null
python "$HERE/uc_plans_by_hand.py" uc "$PRE" "$BASE_PLANS" "$UC_PLANS" > /dev/null  # uc_fusion "residual"
nnunetv2_uc cost -d 990 -p "$BASE_PLANS" | tee "$WORK/cost.md"

TIMEFORMAT="%R s wall, %U s user, %S s sys"
train() {  # name trainer plans
    log "train $1: nnUNetv2_train 990 3d_fullres 0 -tr $2 -p $3 -device $DEVICE"
    { time nice -n 10 env nnUNet_n_proc_DA=1 nnUNetv2_train 990 3d_fullres 0 -tr "$2" -p "$3" \
        -device "$DEVICE" > "$WORK/train_$1.log" 2>&1 ; } 2> "$WORK/time_$1.txt"
    log "trained $1: $(cat "$WORK/time_$1.txt")"
}
pids=()
for entry in "${MODELS[@]}"; do
    name=${entry%%:*}
    read -r trainer plans <<< "${entry#*:}"
    if [ ! -f "$nnUNet_results/$DATASET/${trainer}__${plans}__3d_fullres/fold_0/checkpoint_final.pth" ]; then
        if [ "$PARALLEL" = 1 ]; then train "$name" "$trainer" "$plans" & pids+=($!); else train "$name" "$trainer" "$plans"; fi
    fi
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed training stops the script here

for entry in "${MODELS[@]}"; do
    name=${entry%%:*}
    read -r trainer plans <<< "${entry#*:}"
    if [ ! -f "$WORK/test_$name.json" ]; then
        log "predict and evaluate the held-out cases: $name"
        rm -rf "$WORK/pred_$name"
        nice -n 10 nnUNetv2_predict -i "$RAW/imagesTs" -o "$WORK/pred_$name" -d 990 -c 3d_fullres -tr "$trainer" \
            -p "$plans" -f 0 -device "$DEVICE" -npp 1 -nps 1 --disable_tta > "$WORK/predict_$name.log" 2>&1
        nnunetv2_uc evaluate --gt "$RAW/labelsTs" --pred "$WORK/pred_$name" -o "$WORK/test_$name.json" \
            --table "$WORK/test_$name.md" --overwrite > /dev/null
    fi
done

names=$(printf '%s\n' "${MODELS[@]}" | cut -d: -f1 | paste -sd, -)
nnunetv2_uc evaluate --nnunet-results 990 "$names" 3d_fullres -p "$BASE_PLANS" --folds 0 -o "$WORK/cv.json" \
    --table "$WORK/cv.md" --overwrite > /dev/null
sed -n '/models compared/,$p' "$WORK/cv.md"

python - "$WORK" "$UC_EVIDENCE_ITERATIONS" $(printf '%s\n' "${MODELS[@]}" | cut -d: -f1) <<'EOF' | tee "$WORK/test.md"
"""Held-out cases: evaluate's case-first means (the uC tables' order) next to the cost columns of cv.MODEL.json."""
import json, sys
from pathlib import Path

work, iterations, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("\n### Dataset990_SyntheticCT: 6 held-out cases (imagesTs), fold-0 models\n")
print("| Model | #Params (M) | GMACs | Train (min) | epochs x iterations | mIoU (%) | Dice (%) | VOE (%) | HD95 (mm) "
      "| AdjRand (%) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in names:
    test = json.loads((work / f"test_{name}.json").read_text())["mean_case_first"]
    per_model = work / f"cv.{name}.json"  # evaluate writes cv.json alone for a single model
    model = json.loads((per_model if len(names) > 1 else work / "cv.json").read_text())["model"]
    minutes = model["train_seconds"]["0"] / 60
    print(f"| {name} | {model['parameters'] / 1e6:.2f} | {model['gmacs']:.3f} | {minutes:.1f} | "
          f"{model['epochs']['0']} x {iterations} | {100 * test['iou']:.2f} | {100 * test['dice']:.2f} | "
          f"{100 * test['voe']:.2f} | {test['hd95']:.2f} | {round(100 * test['ari_binary'], 2) + 0.0:.2f} |")  # + 0.0: no -0.00
EOF
log "done: $WORK/cv.md (fold-0 validation), $WORK/test.md (held-out cases), $WORK/evidence.log"
