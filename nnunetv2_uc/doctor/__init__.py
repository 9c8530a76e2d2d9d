"""Is this installation ready for nnU-Net training and prediction with this plugin? (`nnunetv2_uc doctor`)

Each check is a small function that returns a ``Check`` (name, status, detail, fix); ``report.run_checks`` runs
them all and ``checks.blocking`` says whether one failed. The checks take what they inspect as arguments (the
environment, the CUDA facts gathered by ``cuda.cuda_facts``, a compiler probe, ...), so every branch is testable
without a GPU. One module per concern:

    checks.py        the ``Check`` record, its statuses, running one check safely
    environment.py   the installed packages: Python, nnU-Net, dependencies, the torch/torchvision pair, disk space
    cuda.py          the GPU: device, driver, cuDNN, bf16, and the C compiler torch.compile needs
    nnunet_setup.py  nnU-Net's folders, nnUNet_extTrainer and its -tr trainer lookup
    model_folder.py  a trained model folder: files, record, network and checkpoints
    report.py        every check in report order, the text and JSON report

torch, torchvision and nnU-Net are imported inside the checks, never at the top: the doctor has to report a
broken install, not crash on it.
"""
from nnunetv2_uc.doctor.checks import FAIL, OK, SKIP, WARN, Check, blocking
from nnunetv2_uc.doctor.report import format_report, report_json, run_checks

__all__ = ["Check", "FAIL", "OK", "SKIP", "WARN", "blocking", "format_report", "report_json", "run_checks"]
