#!/usr/bin/env python3
"""Summarise a scripts/gpu_check.sh run: OUT/summary.md (to paste into BENCHMARKS.md) and OUT/summary.json.

Usage: python scripts/gpu_check_summary.py OUT

Reads what the check wrote into OUT (meta.json, steps.tsv, doctor.json, the bench JSON files, logs/train_*.log);
a missing file (a step that failed, timed out or was cut by the budget) leaves its cells as "-" and the step is
listed with its status. Standard library only.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

NETWORKS = ("uxnet", "uc3dunet", "plainunet", "resenc_m")
OURS = ("uxnet", "uc3dunet")
STEP_TARGETS = {"uxnet": 2.0, "uc3dunet": 1.5}  # training step time / PlainConvUNet's (issue 13)
GIB = 1024 ** 3


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_rows(out: Path, *names: str) -> dict[str, dict]:
    """network -> row, over the bench JSON files ``names`` (later files do not replace earlier rows)."""
    rows: dict[str, dict] = {}
    for name in names:
        for row in (load_json(out / name) or {}).get("rows", []):
            rows.setdefault(row["name"], row)
    return rows


def bench_environment(out: Path) -> dict:
    for path in sorted(out.glob("*.json")):
        environment = (load_json(path) or {}).get("environment")
        if environment:
            return environment
    return {}


def read_steps(out: Path) -> list[dict]:
    lines = (out / "steps.tsv").read_text().splitlines() if (out / "steps.tsv").is_file() else []
    return [dict(zip(("step", "status", "seconds", "limit_s"), line.split("\t"))) for line in lines[1:]]


def parse_training_log(text: str) -> dict:
    """Losses per epoch and whether torch.compile was used, from nnUNetv2_train's output."""
    def values(key: str) -> list[float]:
        return [float(v) for v in re.findall(rf": {key} (\S+)", text)]

    train, val = values("train_loss"), values("val_loss")
    return {"compiled": "Using torch.compile" in text, "epochs": len(train), "train_loss": train, "val_loss": val,
            "finite": bool(train) and all(math.isfinite(v) for v in train + val),
            "traceback": "Traceback (most recent call last)" in text}


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def get(row: dict | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def verdict(value: float | None, limit: float) -> str:
    return "-" if value is None else ("met" if value <= limit else "NOT met")


def summarise(out: Path) -> tuple[str, dict]:
    meta = load_json(out / "meta.json") or {}
    ran = meta.get("networks", "").split()
    networks = [n for n in NETWORKS if n in ran] if ran else list(NETWORKS)
    steps = read_steps(out)
    doctor = load_json(out / "doctor.json") or {"checks": []}
    environment = bench_environment(out)
    eager = bench_rows(out, "step_eager.json")
    memory = bench_rows(out, "memory128.json")
    compiled = bench_rows(out, *(f"compiled_{n}.json" for n in NETWORKS))
    infer = {tiles: bench_rows(out, *(f"infer{tiles}_{n}.json" for n in NETWORKS)) for tiles in (1, 4)}
    other_layout = bench_rows(out, "layout_ours_contiguous.json", "layout_nnunet_channels_last.json")
    fast_paths = bench_rows(out, "fast_paths_all.json")
    trainers = sorted({s["step"][len("train_"):] for s in steps if s["step"].startswith("train_")}
                      | {p.stem[len("train_"):] for p in (out / "logs").glob("train_*.log")})
    training = {t: parse_training_log(path.read_text()) for t in trainers
                if (path := out / "logs" / f"train_{t}.log").is_file()}
    total = (out / "total_seconds").read_text().strip() if (out / "total_seconds").is_file() else "?"
    driver = next((c["detail"] for c in doctor["checks"] if c["name"] == "cuda driver"), "-")

    data = {"meta": meta, "total_seconds": total, "steps": steps, "environment": environment, "doctor": doctor,
            "training_step": {}, "memory_128": {}, "layout": {}, "inference": {}, "training": training}
    md = []
    title = "GPU check" if not meta.get("smoke") else "GPU check, SMOKE RUN ON CPU (tiny sizes: numbers mean nothing)"
    md.append(f"## {title}: {environment.get('gpu', meta.get('device', '?'))}")
    md.append("")
    md.append(f"`bash scripts/gpu_check.sh` at commit {meta.get('commit', '?')}, {meta.get('started', '?')}: "
              f"torch {environment.get('torch', '?')}, CUDA {environment.get('cuda', '-')}, cuDNN "
              f"{environment.get('cudnn', '-')}, {driver}; {total} s in all. Patch {meta.get('patch')}, "
              f"AMP {meta.get('amp')}, median of {meta.get('repeats')} steps after a warm-up.")
    not_ok = [s for s in steps if s["status"] != "ok"]
    if not_ok:
        md.append("Steps that did not finish: " + "; ".join(f"{s['step']} ({s['status']})" for s in not_ok) + ".")

    md += ["", f"### Training step, {meta.get('patch')} x batch 2, AMP {meta.get('amp')}", "",
           "| network | eager s | eager x plain | compiled s | compiled x plain | target | peak GiB (eager) | "
           "depthwise share |", "|---|---|---|---|---|---|---|---|"]
    plain_eager = get(eager.get("plainunet"), "train_step_s")
    plain_compiled = get(compiled.get("plainunet"), "train_step_s")
    for net in networks:
        e, c = get(eager.get(net), "train_step_s"), get(compiled.get(net), "train_step_s")
        er, cr = ratio(e, plain_eager), ratio(c, plain_compiled)
        target = STEP_TARGETS.get(net)
        goal = (f"<= {target}x: eager {verdict(er, target)}, compiled {verdict(cr, target)}" if target else "")
        peak = get(eager.get(net), "peak_memory_bytes")
        share = get(eager.get(net), "depthwise_share")
        percent = "-" if share is None else f"{100 * share:.1f}%"
        md.append(f"| {net} | {fmt(e)} | {fmt(er, '.2f')} | {fmt(c)} | {fmt(cr, '.2f')} | {goal} | "
                  f"{fmt(peak and peak / GIB, '.2f')} | {percent} |")
        data["training_step"][net] = {"eager_s": e, "eager_x_plain": er, "compiled_s": c, "compiled_x_plain": cr,
                                      "target_x_plain": target, "peak_memory_bytes": peak, "depthwise_share": share}

    md += ["", f"### Peak memory of a training step, batch 2 x {meta.get('memory_patch')}, AMP {meta.get('amp')}", "",
           "(the memory model of `nnunetv2_uc plan` for the same step next to it: its calibration on this GPU)", "",
           "| network | peak GiB | kind | memory model GiB | measured / model |", "|---|---|---|---|---|"]
    for net in networks:
        peak = get(memory.get(net), "peak_memory_bytes")
        model = get(memory.get(net), "estimated_peak_bytes")
        md.append(f"| {net} | {fmt(peak and peak / GIB, '.2f')} | {(memory.get(net) or {}).get('memory_kind', '-')} | "
                  f"{fmt(model and model / GIB, '.2f')} | {fmt(ratio(peak, model), '.2f')} |")
        data["memory_128"][net] = {"peak_memory_bytes": peak, "estimated_peak_bytes": model,
                                   "measured_over_model": ratio(peak, model)}

    md += ["", f"### Layout and fast paths (training step s, {meta.get('patch')} x batch 2)", "",
           "| network | default layout s | other layout s | fast paths on this device s | faster layout |",
           "|---|---|---|---|---|"]
    for net in networks:
        default, other = get(eager.get(net), "train_step_s"), get(other_layout.get(net), "train_step_s")
        names = ("channels_last_3d", "contiguous") if net in OURS else ("contiguous", "channels_last_3d")
        fast = get(fast_paths.get(net), "train_step_s") if net in OURS else None
        faster = "-" if default is None or other is None else (names[0] if default <= other else names[1])
        md.append(f"| {net} | {names[0]}: {fmt(default)} | {names[1]}: {fmt(other)} | "
                  f"{fmt(fast) if net in OURS else 'n/a'} | {faster} |")
        data["layout"][net] = {names[0]: default, names[1]: other, "fast_paths_all": fast}

    md += ["", f"### Inference of a {meta.get('volume')} volume (step 0.5, Gaussian, mirroring, AMP {meta.get('amp')})",
           "", "| network | 1 tile per call s | 4 tiles per call s | 4 / 1 | 1 tile x plain | peak GiB (1 tile) |",
           "|---|---|---|---|---|---|"]
    plain_infer = get(infer[1].get("plainunet"), "inference_s")
    for net in networks:
        one, four = get(infer[1].get(net), "inference_s"), get(infer[4].get(net), "inference_s")
        peak = get(infer[1].get(net), "inference_peak_memory_bytes")
        md.append(f"| {net} | {fmt(one, '.2f')} | {fmt(four, '.2f')} | {fmt(ratio(four, one), '.2f')} | "
                  f"{fmt(ratio(one, plain_infer), '.2f')} | {fmt(peak and peak / GIB, '.2f')} |")
        data["inference"][net] = {"one_tile_s": one, "four_tiles_s": four, "peak_memory_bytes": peak}

    md += ["", "### nnUNetv2_train with nnU-Net's defaults on this device (fold 0, `nnunetv2_uc synth` data)", "",
           "| trainer | step | torch.compile | epochs | train_loss per epoch | val_loss per epoch | finite |",
           "|---|---|---|---|---|---|---|"]
    status = {s["step"]: s["status"] for s in steps}
    for trainer in trainers:
        t = training.get(trainer)
        ran = status.get(f"train_{trainer}", "not run")
        if t is None:
            md.append(f"| {trainer} | {ran} | - | - | - | - | - |")
            continue
        md.append(f"| {trainer} | {ran} | {'on' if t['compiled'] else 'off'} | {t['epochs']} | "
                  f"{', '.join(f'{v:.4f}' for v in t['train_loss']) or '-'} | "
                  f"{', '.join(f'{v:.4f}' for v in t['val_loss']) or '-'} | {'yes' if t['finite'] else 'NO'} |")

    md += ["", "### nnunetv2_uc doctor", ""]
    md += [f"- {c['status']}: {c['name']}: {c['detail']}" for c in doctor["checks"]
           if c["status"] != "ok" or c["name"] in ("cuda device", "cuda driver", "cudnn", "bf16", "torch.compile")]
    md += ["", "### Steps", "", "| step | status | seconds |", "|---|---|---|"]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    return "\n".join(md) + "\n", data


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    markdown, data = summarise(out)
    (out / "summary.md").write_text(markdown)
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
