"""The set-up check: do torch and torchvision match?

A torchvision wheel is built against one torch release. PyPI's torchvision beside another torch
(say a CUDA build of torch installed from PyTorch's index, then ``pip install torchvision``)
fails at ``import torchvision`` with ``RuntimeError: operator torchvision::nms does not exist``
(or at the first NMS, when only its C++ extension fails to load), a 29-line traceback that does
not say what to do. :func:`check_torch_install` turns it into one line naming both versions and
the matching pair to install; the command lines call it first (``utils.cli.setup``), and
torchvision is imported only where it is used (``utils/nms.py``, ``models/backbone.py``), so no
import of this project's modules fails before the check.

    python -m utils.setup_check     # the versions and OK (exit 0), else the one line (exit 2)
"""
from __future__ import annotations

import logging
import sys
from importlib import metadata
from pathlib import Path

LOGGER = logging.getLogger(__name__)

PACKAGE = "allcell-segmenter"   # pyproject.toml's [project] name
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# torchvision 0.(N + 15) is built for torch 2.N (pytorch/vision's README compatibility table:
# torch 2.0 / torchvision 0.15 ... torch 2.14 / torchvision 0.29).
TORCHVISION_MINOR_OFFSET = 15


class SetupError(RuntimeError):
    """The Python environment cannot run this project; ``str(err)`` is one line saying the fix."""


def package_version() -> str:
    """This project's version: the installed package's (``pip install -e .``), else
    pyproject.toml's ``version`` (a clone run from its root), else "unknown"."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib  # Python >= 3.11
        return tomllib.loads(_PYPROJECT.read_text())["project"]["version"]
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


def _installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def matching_torchvision(torch_version: str) -> str:
    """A pip requirement of the torchvision built for ``torch_version`` ("2.14.1+cu121" ->
    "torchvision==0.29.*"; "torchvision" when the version is not a torch 2.x one)."""
    parts = torch_version.split("+")[0].split(".")
    if len(parts) < 2 or parts[0] != "2" or not parts[1].isdigit():
        return "torchvision"
    return f"torchvision==0.{int(parts[1]) + TORCHVISION_MINOR_OFFSET}.*"


def check_torch_install() -> tuple[str, str]:
    """Import torchvision and run its NMS once on one box; returns (torch version, torchvision
    version). Raises :class:`SetupError` (one line: both versions and the pip command of a
    matching pair) when torchvision is missing or does not match torch."""
    import torch
    torch_version = torch.__version__.split("+")[0]
    try:
        import torchvision
        from torchvision.ops import nms
        nms(torch.zeros((1, 4)), torch.ones(1), 0.5)
        return torch_version, torchvision.__version__.split("+")[0]
    except Exception as exc:  # noqa: BLE001 - RuntimeError, ImportError, OSError: one fix
        cause = " ".join(str(exc).split())[:200] or type(exc).__name__
        vision = _installed_version("torchvision")
        raise SetupError(f"torch {torch_version} and torchvision {vision} do not work together "
                         f"({cause}); install a matching pair: pip install torch=={torch_version} "
                         f"{matching_torchvision(torch_version)}") from None


def main() -> int:
    """``python -m utils.setup_check``: the versions and OK, or the one line (exit status 2)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        torch_version, vision_version = check_torch_install()
    except SetupError as exc:
        LOGGER.error("%s", exc)
        return 2
    import torch
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" \
        if torch.cuda.is_available() else "no CUDA device"
    print(f"{PACKAGE} {package_version()}: torch {torch_version}, torchvision {vision_version}, "
          f"{cuda}, Python {sys.version.split()[0]}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
