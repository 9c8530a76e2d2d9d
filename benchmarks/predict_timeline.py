"""Where one prediction command's time and memory go: nnU-Net's predictor steps with timestamps, and each process of
the command's tree at its memory peak.

Runs any prediction command as a user types it (``nnUNetv2_predict ...`` or ``nnunetv2_uc predict ...``) in a fresh
process. A ``sitecustomize`` module put on the command's ``PYTHONPATH`` wraps nnU-Net's predictor steps as soon as
their module is imported (nothing is imported early, so the command and its worker processes load what they would
anyway) and prints when each starts and ends, in seconds since the command started, plus the number and total time
of the network calls. The memory of the process tree (RSS and PSS per process, from /proc/PID/smaps_rollup) is
sampled once a second (faster sampling slows the command: see bench_predict_case.MEMORY_SAMPLE_SECONDS), and the
processes at the PSS peak are listed with their role (main process, spawned worker, forked child).

    python benchmarks/predict_timeline.py --json stock.json -- nnUNetv2_predict -i IN -o OUT -d 990 -c 3d_fullres \\
        -tr nnUNetTrainer -p nnUNetPlans -f 0 -device cpu
    python benchmarks/predict_timeline.py -- nnunetv2_uc predict -i IN -o OUT -d 990 -c 3d_fullres ... --backend torch
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict_case import MEMORY_SAMPLE_SECONDS, run_sampling_memory, tree_memory  # noqa: E402

#: (module, class, methods stamped at each call, methods only counted and summed): nnU-Net's predictor steps and its
#: network call (this project's predictors reach it through super(), so each call is counted once)
HOOKS = (
    ("nnunetv2.inference.predict_from_raw_data", "nnUNetPredictor",
     ("initialize_from_trained_model_folder", "predict_from_files", "predict_from_data_iterator",
      "predict_logits_from_preprocessed_data", "predict_sliding_window_return_logits"),
     ("_internal_maybe_mirror_and_predict",)),
)
STAMP = re.compile(r"^\[timeline t=\s*([0-9.]+)s pid=(\d+)\] (.*)$")

SITECUSTOMIZE = '''
import atexit, functools, importlib.abc, importlib.machinery, os, sys, time
_T0 = float(os.environ["PREDICT_TIMELINE_T0"])
_HOOKS = {hooks!r}
_TOTALS = {{}}

def _stamp(message):
    print(f"[timeline t={{time.time() - _T0:8.1f}}s pid={{os.getpid()}}] {{message}}", flush=True)

def _timed(function, name, each):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.time()
        if each:
            _stamp(f"{{name}} start")
        try:
            return function(*args, **kwargs)
        finally:
            seconds = time.time() - start
            if each:
                _stamp(f"{{name}} end ({{seconds:.1f}} s)")
            count, total = _TOTALS.get(name, (0, 0.0))
            _TOTALS[name] = (count + 1, total + seconds)
    return wrapper

class _Patcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        hooks = [h for h in _HOOKS if h[0] == fullname]
        if not hooks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module
        def exec_module(module):
            execute(module)
            for _, cls_name, each, summed in hooks:
                cls = getattr(module, cls_name)
                for name in each + summed:
                    setattr(cls, name, _timed(getattr(cls, name), name, name in each))
        spec.loader.exec_module = exec_module
        return spec

def _summary():
    for name, (count, total) in sorted(_TOTALS.items()):
        if name in {{n for h in _HOOKS for n in h[3]}}:
            _stamp(f"{{name}}: {{count}} calls, {{total:.1f}} s")

sys.meta_path.insert(0, _Patcher())
atexit.register(_summary)
'''


def role(command_line: str, main_line: str) -> str:
    if "multiprocessing.spawn" in command_line:
        return "spawned worker"
    if "multiprocessing.resource_tracker" in command_line:
        return "resource tracker"
    return "forked child" if command_line == main_line else "other"


def run_with_timeline(command: list[str], log: Path, interval: float = MEMORY_SAMPLE_SECONDS) -> dict:
    """Run ``command`` with the predictor steps stamped; returns the wall time, the steps, the network calls and the
    process tree at its PSS peak."""
    hooks_folder = Path(tempfile.mkdtemp(prefix="predict_timeline_"))
    (hooks_folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hooks=HOOKS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks_folder),
                                                                       os.environ.get("PYTHONPATH")]))}
    executable = shutil.which(command[0]) or command[0]
    peak: tuple[int, list] = (0, [])
    main_pid = 0

    def sample(pid: int) -> None:
        nonlocal peak, main_pid
        main_pid = pid
        processes = tree_memory(pid)
        total = sum(p["pss"] for p in processes)
        if total > peak[0]:
            peak = (total, processes)

    env["PREDICT_TIMELINE_T0"] = repr(time.time())
    try:
        wall, code, _ = run_sampling_memory([executable, *command[1:]], env, log, sample, interval)
    finally:
        shutil.rmtree(hooks_folder, ignore_errors=True)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    steps = [{"t_s": float(m.group(1)), "pid": int(m.group(2)), "event": m.group(3)}
             for m in map(STAMP.match, log.read_text().splitlines()) if m]
    main_line = next((p["command"] for p in peak[1] if p["pid"] == main_pid), "")
    return {"command": command, "wall_s": round(wall, 1), "main_pid": main_pid, "steps": steps,
            "peak_pss_mib": round(peak[0] / 2 ** 20), "peak_rss_mib": round(sum(p["rss"] for p in peak[1]) / 2 ** 20),
            "processes_at_peak": [{"pid": p["pid"], "role": "main" if p["pid"] == main_pid else
                                   role(p["command"], main_line), "rss_mib": round(p["rss"] / 2 ** 20),
                                   "pss_mib": round(p["pss"] / 2 ** 20)} for p in peak[1]]}


def print_report(report: dict) -> None:
    print(f"wall {report['wall_s']} s")
    for step in report["steps"]:
        where = "" if step["pid"] == report["main_pid"] else f" (worker {step['pid']})"
        print(f"  {step['t_s']:8.1f} s  {step['event']}{where}")
    print(f"peak PSS {report['peak_pss_mib']} MiB (RSS {report['peak_rss_mib']} MiB) over "
          f"{len(report['processes_at_peak'])} processes:")
    for p in report["processes_at_peak"]:
        print(f"  pid {p['pid']:>7}  {p['role']:<16}  RSS {p['rss_mib']:>6} MiB  PSS {p['pss_mib']:>6} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, default=Path("predict_timeline.log"), help="the command's output")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--memory-interval", type=float, default=MEMORY_SAMPLE_SECONDS,
                        help="seconds between memory samples (0.1 shows how much faster sampling slows the command)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the prediction command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the prediction command after --")
    report = run_with_timeline(command, args.log, args.memory_interval)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
