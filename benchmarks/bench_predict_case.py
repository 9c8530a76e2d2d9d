"""One CT-sized case through the stock `nnUNetv2_predict` and `nnunetv2_uc predict` with each backend and precision.

For each way of predicting (stock nnUNetv2_predict; nnunetv2_uc predict with torch fp32 / bf16, and from an
export-onnx folder with onnxruntime fp32 and OpenVINO fp32 / bf16), with and without mirroring: the wall time of the
command (a fresh process, as a user runs it), the peak RSS and PSS of its process tree (sampled every second:
nnU-Net's preprocessing and export workers included), the time of one tile (median of ``--tile-repeats`` network
calls in this process, mirrored calls included) and the share of voxels whose label equals the stock prediction's. Then
where the time goes: nnU-Net's three stages (preprocessing with resampling, sliding window, export with resampling)
timed in this process for the stock path and the fastest one. Everything is written to ``--json``.

The model is a trained model folder (``--model-folder``; its checkpoint's trainer is run as nnUNetTrainer, which
predicts the same) or, with ``--network uc3dunet|uxnet --patch``, that paper network at its paper widths and the
given patch, initialised by its trainer (untrained: timings do not depend on the weights, label agreement does).
The case is a synthetic CT (the demo's generator, resized) that is ``--shape`` voxels after nnU-Net resamples it to
the plans' spacing; its own spacing is the plans' times ``--native-zoom`` (so preprocessing and export resample).

    python benchmarks/bench_predict_case.py --model-folder /tmp/uc_evidence_s0/nnUNet_results/Dataset990_SyntheticCT/\
nnUNetTrainer_evidence__nnUNetPlans_evidence__3d_fullres --shape 160 320 320 --json plain.json
    python benchmarks/bench_predict_case.py --model-folder ... --network uc3dunet --patch 96 96 96 --shape 96 192 192
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import zoom

from nnunetv2_uc.demo.synth import synthesize_case
from nnunetv2_uc.registration import ENV_VAR, ext_trainer_value

CONFIGURATION = "3d_fullres"
#: name -> (backend, precision): the ways of predicting, after the stock command
OURS = {f"{backend} {precision}": (backend, precision)
        for backend, precision in (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
                                   ("openvino", "bf16"))}


# ---------------------------------------------------------------------------------------------------- the setup
def copy_trained_model(model_folder: Path, results: Path, allow_mirroring: bool = False) -> Path:
    """The model under ``results`` as nnUNetTrainer__PLANS__3d_fullres (fold_0 only; checkpoints renamed to the
    trainer nnUNetTrainer: the experiment trainers only change the training schedule). ``allow_mirroring``: its
    checkpoint allows mirroring on all three axes (for timing mirrored prediction of a model trained without)."""
    dataset = model_folder.parent.name
    plans_name = model_folder.name.split("__")[1]
    target = results / dataset / f"nnUNetTrainer__{plans_name}__{CONFIGURATION}"
    (target / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model_folder / name, target / name)
    checkpoint = torch.load(model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    if allow_mirroring:
        checkpoint["inference_allowed_mirroring_axes"] = (0, 1, 2)
    kept = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes")
    torch.save({k: checkpoint[k] for k in kept}, target / "fold_0" / "checkpoint_final.pth")
    return target


def paper_network_model(model_folder: Path, results: Path, network: str, patch: list[int]) -> Path:
    """``network`` at its paper widths and ``patch``, initialised by its trainer, as a model folder under
    ``results`` (plans: ``model_folder``'s with the patch fixed, as the paper96 plans override does)."""
    from nnunetv2_uc.architectures.registry import network_entry
    from nnunetv2_uc.registration import find_trainer_class

    entry = network_entry(network)
    plans = json.loads((model_folder / "plans.json").read_text())
    plans["plans_name"] = f"nnUNetPlans_bench{network}"
    configuration = plans["configurations"][CONFIGURATION]
    configuration.update(patch_size=list(patch), batch_size=2, uc_fixed_patch=True)
    for key in ("uc3dunet_kwargs", "uxnet_kwargs"):
        configuration.pop(key, None)
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    trainer = find_trainer_class(entry.trainer)({**plans, "continue_training": False}, CONFIGURATION, 0, dataset_json,
                                                device=torch.device("cpu"))
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                                 trainer.label_manager.num_segmentation_heads, False)
    target = results / model_folder.parent.name / f"{entry.trainer}__{plans['plans_name']}__{CONFIGURATION}"
    (target / "fold_0").mkdir(parents=True, exist_ok=True)  # the trainer made it already
    (target / "plans.json").write_text(json.dumps(trainer.plans_manager.plans, indent=2))
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    torch.save({"network_weights": network.state_dict(), "init_args": trainer.my_init_kwargs,
                "trainer_name": entry.trainer, "inference_allowed_mirroring_axes": (0, 1, 2)},
               target / "fold_0" / "checkpoint_final.pth")
    return target


def write_case(plans: dict, shape: list[int], native_zoom: list[float], folder: Path, seed: int = 7) -> Path:
    """A synthetic CT whose size at the plans' spacing is ``shape``; its spacing is the plans' times
    ``native_zoom`` (its voxel grid ``shape / native_zoom``)."""
    target_spacing = np.array(plans["configurations"][CONFIGURATION]["spacing"], dtype=float)
    case = synthesize_case(seed, 0, held_out=True)
    native_shape = np.round(np.array(shape) / np.array(native_zoom)).astype(int)
    image = zoom(case.image, native_shape / np.array(case.image.shape), order=1).astype(np.float32)
    folder.mkdir(parents=True)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(tuple(float(s) for s in reversed(target_spacing * np.array(native_zoom))))
    path = folder / "ctcase_000_0000.nii.gz"
    sitk.WriteImage(itk, str(path))
    return path


# ------------------------------------------------------------------------------------------------ measuring
def tree_memory(root: int) -> list[dict]:
    """RSS and PSS in bytes (and the command line) of ``root`` and each of its descendants (Linux /proc). RSS counts
    the pages that processes share (torch's libraries in nnU-Net's worker processes) once per process; PSS splits
    them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    processes = []
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            rss, pss = (int(fields[key].split()[0]) * 1024 for key in ("Rss", "Pss"))
        except (OSError, ValueError, KeyError):  # gone, or a zombie without memory
            continue
        processes.append({"pid": pid, "command": command, "rss": rss, "pss": pss})
    return processes


#: Seconds between two samples of the process tree's memory. Reading smaps_rollup walks each process's page tables
#: and holds its memory-map lock: every 0.1 s it slowed nnUNetv2_predict's sliding window by 22 % (UC3DUNet, 9
#: tiles: 41.3 s against 33.9 s sampled every second; BENCHMARKS.md) and the 1-s peak PSS was within 4 % of it.
MEMORY_SAMPLE_SECONDS = 1.0


def run_sampling_memory(command: list[str], env: dict, log: Path, sample: Callable[[int], None],
                        interval: float = MEMORY_SAMPLE_SECONDS) -> tuple[float, int, float]:
    """Run ``command`` (output to ``log``) and call ``sample(pid)`` every ``interval`` seconds while it runs; returns
    (wall seconds, exit code, CPU seconds the sampling used)."""
    sampler_cpu = 0.0
    with log.open("w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample_until_done() -> None:
            nonlocal sampler_cpu
            while not done.is_set():
                sample(process.pid)
                done.wait(interval)
            sampler_cpu = time.thread_time()

        sampler = threading.Thread(target=sample_until_done)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    return wall, code, sampler_cpu


def run_timed(command: list[str], env: dict, log: Path,
              interval: float = MEMORY_SAMPLE_SECONDS) -> tuple[float, tuple[int, int], float]:
    """(wall seconds, (peak RSS, peak PSS) bytes of the process tree, CPU seconds the memory sampler used) of
    ``command``; its output goes to ``log``."""
    peak = (0, 0)

    def sample(pid: int) -> None:
        nonlocal peak
        processes = tree_memory(pid)
        rss, pss = sum(p["rss"] for p in processes), sum(p["pss"] for p in processes)
        peak = (max(peak[0], rss), max(peak[1], pss))

    wall, code, sampler_cpu = run_sampling_memory(command, env, log, sample, interval)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    return wall, peak, sampler_cpu


def labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def agreement_per_case(folder: Path, reference_folder: Path) -> dict[str, float]:
    """Share of voxels with the reference's label, per case."""
    reference = labels(reference_folder)
    got = labels(folder)
    if sorted(got) != sorted(reference):
        raise RuntimeError(f"{folder} and {reference_folder} hold different cases")
    return {case: float(np.mean(got[case] == reference[case])) for case in reference}


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- the predictors
def torch_predictor(model: Path, precision: str, mirroring: bool):
    from nnunetv2_uc.inference.predict import BatchedSlidingWindowPredictor, load_trained_model

    predictor = BatchedSlidingWindowPredictor(use_mirroring=mirroring, perform_everything_on_device=False,
                                              device=torch.device("cpu"), allow_tqdm=False, patches_per_batch=1,
                                              cpu_precision=precision)
    load_trained_model(predictor, str(model), [0], "checkpoint_final.pth", model.name.split("__")[0], CONFIGURATION)
    return predictor


def exported_predictor(export: Path, backend: str, precision: str, mirroring: bool):
    from nnunetv2_uc.inference.onnx_export import load_exported_model, predictor_for_export

    return predictor_for_export(load_exported_model(export), backend, mirroring=mirroring, progress_bar=False,
                                precision=precision)


def predictor_for(name: str, model: Path, export: Path, mirroring: bool):
    if name == "stock":
        return torch_predictor(model, "fp32", mirroring)
    backend, precision = OURS[name]
    if backend == "torch":
        return torch_predictor(model, precision, mirroring)
    return exported_predictor(export, backend, precision, mirroring)


def tile_seconds(predictor, patch: list[int], channels: int, repeats: int) -> float:
    """One tile through the predictor's network (mirrored calls included when it mirrors)."""
    tile = torch.randn(1, channels, *patch)
    predictor.network.load_state_dict(predictor.list_of_parameters[0])  # a fold's weights, or its runtime session
    with torch.inference_mode():
        return median_seconds(lambda: predictor._internal_maybe_mirror_and_predict(tile), repeats)


def stage_seconds(predictor, image: Path, output: Path) -> dict[str, float]:
    """nnU-Net's three stages of one case, as its predict_from_files runs them, timed one after the other."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    manager, configuration = predictor.plans_manager, predictor.configuration_manager
    output.mkdir(parents=True, exist_ok=True)
    times = {}
    start = time.perf_counter()
    preprocessor = configuration.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case([str(image)], None, manager, configuration, predictor.dataset_json)
    times["preprocessing"] = time.perf_counter() - start
    start = time.perf_counter()
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    times["sliding window"] = time.perf_counter() - start
    start = time.perf_counter()
    export_prediction_from_logits(logits, properties, configuration, manager, predictor.dataset_json,
                                  str(output / image.name.replace("_0000.nii.gz", "")), False)
    times["export"] = time.perf_counter() - start
    return times


# ------------------------------------------------------------------------------------------------------ main
def commands(name: str, model: Path, export: Path, images: Path, output: Path, mirroring: bool) -> list[str]:
    trainer, plans, _ = model.name.split("__")
    dataset = model.parent.name
    tta = [] if mirroring else ["--disable_tta"]
    if name == "stock":
        return [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(images), "-o", str(output), "-d",
                dataset, "-c", CONFIGURATION, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu", "--disable_progress_bar", *tta]
    backend, precision = OURS[name]
    common = [sys.executable, "-m", "nnunetv2_uc", "predict", "-i", str(images), "-o", str(output), "--precision",
              precision, "--disable_progress_bar", *tta]
    if backend == "torch":
        return [*common, "-d", dataset, "-c", CONFIGURATION, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu",
                "--backend", "torch"]  # on the CPU the default (auto) would take an installed runtime
    return [*common, "-m", str(export), "--backend", backend]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-folder", type=Path, required=True, help="a trained nnU-Net model folder (fold_0)")
    parser.add_argument("--network", choices=("uc3dunet", "uxnet"), default=None,
                        help="time this paper network (paper widths, --patch) on the model folder's plans instead")
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 320, 320], help="case size at the plans' spacing")
    parser.add_argument("--native-zoom", type=float, nargs=3, default=[1.0, 0.8, 0.8],
                        help="the case's spacing / the plans' spacing per axis (resampled by nnU-Net)")
    parser.add_argument("--images", type=Path, default=None,
                        help="predict the cases in this folder instead of a synthetic CT-sized case (--shape and "
                             "--native-zoom unused; --profile times the first case's stages)")
    parser.add_argument("--ways", nargs="+", default=["stock", *OURS],
                        help="which ways of predicting: stock, 'torch fp32', ...")
    parser.add_argument("--mirroring", choices=("off", "on", "both"), default="both")
    parser.add_argument("--mirrored-ways", nargs="+", default=None,
                        help="with --mirroring both: the ways also run with mirroring (default: all)")
    parser.add_argument("--allow-mirroring", action="store_true",
                        help="let the copied model mirror on all axes even if it was trained without (timing)")
    parser.add_argument("--tile-repeats", type=int, default=3)
    parser.add_argument("--profile", nargs="*", default=["stock"], help="ways whose stages are timed in-process")
    parser.add_argument("--memory-interval", type=float, default=MEMORY_SAMPLE_SECONDS,
                        help="seconds between memory samples of the command's process tree (shorter slows it)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_case_"))
    results = work / "nnUNet_results"
    env = {**os.environ, "nnUNet_results": str(results), "nnUNet_raw": str(work / "raw"),
           "nnUNet_preprocessed": str(work / "preprocessed"), "nnUNet_compile": "f",
           ENV_VAR: ext_trainer_value(os.environ.get(ENV_VAR))}
    os.environ.update({k: env[k] for k in ("nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_compile")})
    for key in ("raw", "preprocessed"):
        (work / key).mkdir(parents=True, exist_ok=True)
    if args.network:
        model = paper_network_model(args.model_folder, results, args.network, args.patch)
    else:
        model = copy_trained_model(args.model_folder, results, args.allow_mirroring)
    plans = json.loads((model / "plans.json").read_text())
    patch = plans["configurations"][CONFIGURATION]["patch_size"]
    if args.images:
        images, image = args.images, sorted(args.images.glob("*_0000.nii.gz"))[0]
    else:
        images = work / "images"
        image = write_case(plans, args.shape, args.native_zoom, images)
    export = work / "export"
    export_wall, _, _ = run_timed([sys.executable, "-m", "nnunetv2_uc", "export-onnx", "-m", str(model), "-f", "0",
                                "-o", str(export)], env, work / "export.log")
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    tiles = None if args.images else int(np.prod([len(s) for s in compute_steps_for_sliding_window(args.shape, patch,
                                                                                                   0.5)]))
    report = {"model": str(args.model_folder), "allowed_mirroring_axes": torch.load(
        model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)[
        "inference_allowed_mirroring_axes"], "network": args.network or plans["configurations"][CONFIGURATION][
        "architecture"]["network_class_name"], "patch": patch, "shape": args.shape, "native_zoom": args.native_zoom,
        "native_shape": list(sitk.ReadImage(str(image)).GetSize())[::-1], "tiles": tiles,
        "export_onnx_s": round(export_wall, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "runs": []}
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}), flush=True)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.mirroring]
    for mirroring in settings:
        ways = args.ways if not (mirroring and args.mirrored_ways) else args.mirrored_ways
        for name in ways:
            output = work / f"out_{name.replace(' ', '_')}_{'tta' if mirroring else 'notta'}"
            wall, peak, sampler_cpu = run_timed(commands(name, model, export, images, output, mirroring), env,
                                                output.with_suffix(".log"), args.memory_interval)
            predictor = predictor_for(name, model, export, mirroring)
            per_tile = tile_seconds(predictor, patch, 1, args.tile_repeats)
            agreement = agreement_per_case(output, work / f"out_stock_{'tta' if mirroring else 'notta'}")
            row = {"way": name, "mirroring": mirroring, "wall_s": round(wall, 1), "tile_s": round(per_tile, 3),
                   "peak_rss_mib": round(peak[0] / 2 ** 20), "peak_pss_mib": round(peak[1] / 2 ** 20),
                   "memory_sampler_cpu_s": round(sampler_cpu, 2),
                   "agreement_with_stock": min(agreement.values()), "agreement_per_case": agreement}
            if name in args.profile:
                row["stages_s"] = {k: round(v, 1) for k, v in stage_seconds(predictor, image, work / f"profile_"
                                                                              f"{output.name}").items()}
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"everything is in {work}", flush=True)


if __name__ == "__main__":
    main()
