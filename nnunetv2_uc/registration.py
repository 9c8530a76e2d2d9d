"""How nnU-Net finds this plugin's code, and which code trained a model.

Finding the trainers: ``nnunetv2_uc env`` prints `export nnUNet_extTrainer=...` with this package's shim directory
appended to any existing value (never dropping it; unchanged if the directory is already listed). nnU-Net then
resolves `-tr nnUNetTrainerUC`, `-tr nnUNetTrainerUXNet` and their _SGD/_tiny variants in nnUNetv2_train and
nnUNetv2_predict; ``find_trainer_class`` is nnU-Net's own -tr lookup with them findable.

Which code trained a model, recorded where the model travels, and what to install when that code is missing here.

nnU-Net's model zip (``nnUNetv2_export_model_to_zip``) carries a results folder's plans.json, dataset.json,
dataset_fingerprint.json and fold checkpoints, but no code: the receiver needs the trainer class the checkpoints
name (found by name; this plugin's through ``nnUNet_extTrainer``) and the network class the trainer builds. The
plugin trainers therefore add a record to the plans they save as the results folder's plans.json
(``PaperNetworkTrainer.on_train_start``)::

    "nnunetv2_uc": {"distribution": "nnunetv2-uc", "version": "0.1.0",
                    "trainer": {"class": "nnUNetTrainerUC", "module": "nnunetv2_uc.trainers.paper_trainers"},
                    "network": {"name": "uc3dunet", "import_path": "nnunetv2_uc.architectures.uc3dunet.UC3DUNet"}}

nnU-Net ignores the entry. ``nnunetv2_uc predict`` and ``nnunetv2_uc doctor -m`` read it back when a model's trainer
or network does not resolve and name the class, the version that trained it and the install command. A model trained
by nnU-Net's own trainers from plans naming a class of this package (``architectures/uc_unet.py``) has no plugin
trainer; its network class path (``nnunetv2_uc.…``) is what names the package then.

Trainers import this module, so it imports neither them nor torch or nnU-Net at the top (the doctor imports it too
and must report a broken install rather than crash on it).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_uc import __version__

ENV_VAR = "nnUNet_extTrainer"
SHIM_MODULE = "nnunetv2_uc.ext_trainers.nnunetv2_uc_trainers_shim"  # the one module of shim_directory()


def shim_directory() -> str:
    """Absolute path of the directory holding only the shim module (inside the installed package)."""
    return str((Path(__file__).resolve().parent / "ext_trainers"))


def ext_trainer_value(existing: str | None) -> str:
    """``existing`` with the shim directory appended (os.pathsep-separated), keeping every other entry."""
    shim = shim_directory()
    entries = [e for e in (existing or "").split(os.pathsep) if e]
    if any(os.path.abspath(e) == shim for e in entries):
        return os.pathsep.join(entries)
    return os.pathsep.join(entries + [shim])


def export_line(existing: str | None) -> str:
    return f"export {ENV_VAR}={shlex.quote(ext_trainer_value(existing))}"


def register_trainers() -> None:
    """Let nnU-Net's trainer lookup in this process (and its children) find this plugin's trainers."""
    os.environ[ENV_VAR] = ext_trainer_value(os.environ.get(ENV_VAR))


@contextlib.contextmanager
def plugin_trainers_findable():
    """nnUNet_extTrainer with this plugin's shim folder appended, for the duration (as nnunetv2_uc predict does)."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ext_trainer_value(before)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def find_trainer_class(trainer_name: str):
    """nnU-Net's own trainer lookup (its search log silenced), with this plugin's trainers findable."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with plugin_trainers_findable(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes of modules the lookup imports
        return recursive_find_trainer_class_by_name(trainer_name)


DIST = "nnunetv2-uc"
PLUGIN_MODULE_PREFIX = "nnunetv2_uc."  # the import paths of this package's classes
RECORD_KEY = "nnunetv2_uc"  # the top-level plans.json entry
TRAINER_NOT_FOUND = "Could not find requested nnunet trainer"  # nnU-Net's lookup error (find_objects.py)
#: what building a network from plans raises when the class or its arguments differ between versions
BUILD_ERRORS = (ImportError, AttributeError, TypeError, KeyError, ValueError)


@dataclass(frozen=True)
class Record:
    """Who trained a model: this package's version, the trainer class and the network it built."""

    version: str | None
    trainer_class: str | None = None
    trainer_module: str | None = None
    network_name: str | None = None
    network_import_path: str | None = None

    def to_json(self) -> dict:
        return {"distribution": DIST, "version": self.version,
                "trainer": {"class": self.trainer_class, "module": self.trainer_module},
                "network": {"name": self.network_name, "import_path": self.network_import_path}}

    @classmethod
    def from_json(cls, entry: object) -> Record | None:
        """The record of a plans entry; None for anything that is not one (absent, hand-edited to another shape)."""
        if not isinstance(entry, dict) or entry.get("distribution") != DIST:
            return None
        trainer = entry.get("trainer") if isinstance(entry.get("trainer"), dict) else {}
        network = entry.get("network") if isinstance(entry.get("network"), dict) else {}
        return cls(entry.get("version"), trainer.get("class"), trainer.get("module"), network.get("name"),
                   network.get("import_path"))

    def describe(self) -> str:
        """'nnunetv2-uc 0.1.0 (trainer nnUNetTrainerUC from nnunetv2_uc.trainers.paper_trainers, network uc3dunet = …)'."""
        parts = []
        if self.trainer_class:
            parts.append(f"trainer {self.trainer_class} from {self.trainer_module}")
        if self.network_import_path:
            parts.append(f"network {self.network_name} = {self.network_import_path}")
        details = f" ({', '.join(parts)})" if parts else ""
        return f"{DIST} {self.version or '(version not recorded)'}{details}"


def registry_name(network_import_path: str) -> str | None:
    """The registry's name of the network class at ``network_import_path`` (None for a class it does not list)."""
    from nnunetv2_uc.architectures.registry import NETWORKS  # not at the top: see the module docstring

    return next((e.name for e in NETWORKS.values() if e.import_path == network_import_path), None)


def record_for(trainer_class: type | None, network_import_path: str) -> Record:
    """The record of a training run of ``trainer_class`` (None: one of nnU-Net's trainers) on the network class at
    ``network_import_path`` (what the plans' architecture block names), by the version of the code running now."""
    return Record(__version__,
                  trainer_class.__name__ if trainer_class else None,
                  trainer_class.__module__ if trainer_class else None,
                  registry_name(network_import_path), network_import_path)


def stamp(plans: dict, trainer_class: type | None, network_import_path: str) -> None:
    """Put the record into ``plans`` (in place), replacing an older one: nnU-Net saves this dict as plans.json."""
    plans[RECORD_KEY] = record_for(trainer_class, network_import_path).to_json()


def read_record(plans: dict) -> Record | None:
    return Record.from_json(plans.get(RECORD_KEY))


def load_record(model_folder: str | os.PathLike) -> Record | None:
    """The record in a model folder's plans.json; None without one (or without a readable plans.json: the
    callers report that on their own)."""
    try:
        plans = json.loads((Path(model_folder) / "plans.json").read_text())
    except (OSError, ValueError):
        return None
    return read_record(plans) if isinstance(plans, dict) else None


def is_ours(import_path: str | None) -> bool:
    return bool(import_path) and import_path.startswith(PLUGIN_MODULE_PREFIX)


def installed_trainer_names() -> set[str]:
    """The trainer names the installed package lets nnU-Net find (the classes its nnUNet_extTrainer shim exports)."""
    import importlib

    try:  # here, not at the top: the shim imports the trainers, which import this module
        shim = importlib.import_module(SHIM_MODULE)
    except Exception:  # a broken install: nothing is findable (the doctor's trainer lookup line says why)
        return set()
    return {name for name, obj in vars(shim).items() if isinstance(obj, type)}


def install_command(version: str | None) -> str:
    if version:
        return f'pip install "{DIST}=={version}" (or its wheel: pip install nnunetv2_uc-{version}-py3-none-any.whl)'
    return f"pip install --upgrade {DIST}"


def how_to_predict() -> str:
    return (f"then predict with `nnunetv2_uc predict` (it finds this plugin's trainers itself) or, for the stock "
            f'nnUNetv2_predict, first run `eval "$(nnunetv2_uc env)"` (here: {export_line(os.environ.get(ENV_VAR))})')


def missing_trainer_message(trainer_name: str, record: Record | None) -> str:
    """What to do when nnU-Net's -tr lookup does not find ``trainer_name``, the trainer the model's checkpoints name."""
    installed = installed_trainer_names()
    if trainer_name in installed:
        return (f"{trainer_name} is a trainer of the installed {DIST} {__version__}, yet nnU-Net's lookup does not find "
                f"it: run `nnunetv2_uc doctor` (its 'trainer lookup' line says why); the stock nnUNetv2_predict also "
                f'needs `eval "$(nnunetv2_uc env)"`')
    if record is not None and record.trainer_class == trainer_name:
        trained = (f"plans.json records that {DIST} {record.version} trained this model with {trainer_name} "
                   f"(module {record.trainer_module})")
        if not is_ours(record.trainer_module):
            return (f"{trained}; that module is not part of {DIST}: install the package that provides "
                    f"{record.trainer_module} and add its trainer folder to {ENV_VAR}, together with "
                    f"{install_command(record.version)}")
        return (f"{trained}; this environment has {DIST} {__version__}, which lacks that trainer. Fix: "
                f"{install_command(record.version)}, {how_to_predict()}")
    if record is not None:
        return (f"{trainer_name} is not a trainer of the installed {DIST} {__version__}; plans.json records {DIST} "
                f"{record.version}. Fix: {install_command(record.version)}, {how_to_predict()}")
    if any(trainer_name.startswith(name) for name in installed):
        return (f"{trainer_name} looks like a trainer of another {DIST} version than the installed {__version__}, but "
                f'plans.json has no "{RECORD_KEY}" entry naming the version that trained it (older versions wrote '
                f"none): ask the sender for theirs (pip show {DIST}) and install it, or try "
                f"{install_command(None)}; {how_to_predict()}")
    return (f"{trainer_name} is neither nnU-Net's nor a trainer of {DIST} (plans.json has no \"{RECORD_KEY}\" entry): "
            f"install the package that defines it and add its trainer folder to {ENV_VAR}")


def needed_network(model_folder: str | os.PathLike, configuration: str, record: Record | None) -> str | None:
    """The import path of the network the model's trainer builds: the recorded one (this plugin's trainers), else
    the class the configuration's architecture block names (nnU-Net's trainers build that one)."""
    if record is not None and record.network_import_path:
        return record.network_import_path
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # not at the top: see the docstring

    try:
        plans = json.loads((Path(model_folder) / "plans.json").read_text())
        return PlansManager(plans).get_configuration(configuration).network_arch_class_name
    except Exception:  # an unreadable plans file or configuration is reported by whoever reads the model
        return None


def missing_network_message(network_path: str | None, configuration: str, record: Record | None,
                            error: str) -> str | None:
    """What to install when a model's network does not build or load here (None for a class of another package)."""
    if not is_ours(network_path):
        return None
    source = f"the network class {network_path} (plans.json configuration {configuration}) comes from {DIST}"
    if record is None:
        return (f"{source}; plans.json records no {DIST} version, and the installed {__version__} does not match the "
                f"model ({error}). Fix: install the sender's version (pip show {DIST} on their side) or try "
                f"{install_command(None)}")
    if record.version == __version__:
        return (f"{source} {__version__}, the installed version, so the version is not why it fails ({error}): was "
                "plans.json changed after training? Use the model folder as the sender exported it")
    then = f", {how_to_predict()}" if is_ours(record.trainer_module) else ""
    return (f"{source} {record.version} (recorded in plans.json); the installed {__version__} does not match the "
            f"model ({error}). Fix: {install_command(record.version)}{then}")


def version_note(record: Record | None) -> str | None:
    """A warning when the model was trained with another version of this package than the one running."""
    if record is None or record.version == __version__:
        return None
    return (f"this model was trained with {DIST} {record.version}, this environment has {__version__}; to predict "
            f"with the code that trained it: {install_command(record.version)}")


def explain_load_failure(model_folder: str | os.PathLike, trainer_name: str, configuration: str,
                         error: BaseException) -> str | None:
    """A message naming the missing trainer or network, its version and the install command, for an error of
    nnU-Net's ``initialize_from_trained_model_folder``; None when the error is not about missing code."""
    record = load_record(model_folder)
    if isinstance(error, RuntimeError) and TRAINER_NOT_FOUND in str(error):
        return (f"{model_folder} was trained with the trainer {trainer_name}, which nnU-Net cannot find here: "
                + missing_trainer_message(trainer_name, record))
    if isinstance(error, BUILD_ERRORS):
        network_path = needed_network(model_folder, configuration, record)
        message = missing_network_message(network_path, configuration, record, f"{type(error).__name__}: {error}")
        return None if message is None else f"{model_folder}: {message}"
    return None
