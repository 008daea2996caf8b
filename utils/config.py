"""YAML configuration loaded into validated dataclasses.

An unknown key, a missing required key or a value of the wrong type is a :class:`ConfigError`
naming the file and the key, so a typo in a hyp file never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

LOGGER = logging.getLogger(__name__)
T = typing.TypeVar("T")
# The repository root: the shipped configuration (data/) and ckpts/ resolve against it, whatever the cwd.
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A configuration file or dict does not match its schema (one-line message)."""


def _check_value(value, tp, where: str):
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and origin is list:
            value = [value]  # a single entry where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *rest) = typing.get_args(tp) or (typing.Any,)
        items = [_check_value(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        (_, vtype) = typing.get_args(tp) or (typing.Any, typing.Any)
        return {k: _check_value(v, vtype, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown or missing keys raise :class:`ConfigError`."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], f"{where}: {name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_yaml(path) -> dict:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], source) -> T:
    """``source`` is a YAML path, a dict, or already a ``cls``."""
    if isinstance(source, cls):
        return source
    if isinstance(source, dict):
        return from_dict(cls, source, cls.__name__)
    return from_dict(cls, load_yaml(source), str(source))


def to_dict(obj) -> dict:
    """Dataclass -> plain dict (for opt.yaml / hyp.yaml and checkpoint metadata)."""
    return dataclasses.asdict(obj)


@dataclass
class Hyp:
    """Training hyperparameters (data/hyps/*.yaml). Loss gains live in ``loss``, validated by the loss."""

    # optimizer (YOLOv5's defaults for SGD; AdamW uses lr0 ~1e-3)
    optimizer: str = "SGD"
    lr0: float = 0.01
    lrf: float = 0.01           # final lr = lr0 * lrf
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    warmup_min_iters: int = 100  # warm-up lasts at least this many steps (YOLOv5's 100)
    grad_clip: float = 10.0     # max gradient norm (YOLOv5 clips at 10)
    ema_decay: float = 0.9999   # YOLOv5 ModelEMA decay, ramped up over ema_tau updates
    ema_tau: float = 2000.0
    # augmentation (fractions, degrees, probabilities)
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    contrast: float = 0.2       # random gamma/contrast jitter amplitude for grey modalities
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    flipud: float = 0.5
    fliplr: float = 0.5
    mosaic: float = 1.0
    rot90: float = 0.5          # probability of a random 90-degree rotation (microscopy has no "up")
    multiscale: float = 0.0     # train at img * U(1 - m, 1 + m), rounded to the stride; 0 = off
    # appearance augmentation (utils.appearance): probabilities, 0 = off
    invert: float = 0.0         # grey tiles: intensity inversion (dark <-> bright cells)
    colour_place: float = 0.0   # grey tiles: moved to one random colour channel
    channel_shuffle: float = 0.0  # colour fluorescence tiles: channels permuted
    stain: float = 0.0          # colour brightfield tiles: H&E (HED) stain jitter
    gamma: float = 0.0          # gamma curve, exponent 0.5-2
    blur: float = 0.0           # Gaussian blur
    noise: float = 0.0          # additive Gaussian noise
    # weakly-supervised stage: pseudo labels under this confidence are ignored by the loss
    pseudo_conf: float = 0.0
    # parameters that do not train (YOLOv5's --freeze): names of model modules, each freezing
    # every parameter under it (e.g. "backbone.layer1"); an unknown name is an error at set-up
    freeze: list[str] = field(default_factory=list)
    loss: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.optimizer not in ("SGD", "Adam", "AdamW"):
            raise ValueError(f"optimizer must be SGD, Adam or AdamW, got {self.optimizer}")
        for name in ("mosaic", "flipud", "fliplr", "rot90", "invert", "colour_place",
                     "channel_shuffle", "stain", "gamma", "blur", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1]")
        if not 0.0 <= self.multiscale < 1.0:
            raise ValueError("multiscale must be in [0, 1)")
        if self.warmup_min_iters < 0:
            raise ValueError("warmup_min_iters must be >= 0")


# Hyp files renamed in this repository: the original framework's file name -> the new name in the
# same folder, read (with a warning) when no file of the old name exists (load_hyp).
RENAMED_HYPS = {"hyp.ws_flourescene.yaml": "hyp.ws_fluorescence.yaml"}


def load_hyp(path) -> Hyp:
    """A hyp YAML (``--hyp``); a renamed file's old name (:data:`RENAMED_HYPS`) reads the new
    file when no file of the old name exists."""
    path = Path(path)
    new = path.with_name(RENAMED_HYPS.get(path.name, path.name))
    if new != path and not path.exists() and new.is_file():
        LOGGER.warning("%s: renamed %s, reading that", path, new.name)
        path = new
    return load_config(Hyp, path)


@dataclass
class SourceSpec:
    """One source of a dataset YAML's ``sources`` mapping (see utils.sampling)."""

    match: str            # fnmatch pattern on the image path relative to ``path``, e.g. "ctc/*/ctc_dic_*"
    share: float = 1.0    # relative share of every training epoch (normalised over the sources)

    def __post_init__(self):
        if not self.share >= 0:
            raise ValueError(f"share must be >= 0, got {self.share}")


@dataclass
class DataConfig:
    """A dataset YAML (data/*.yaml).

    ``path`` is the dataset root, relative to the YAML file's folder unless absolute. Each entry of
    ``train``/``val``/``unlabeled``/``pseudo`` is either a folder under ``path`` in the NeurIPS layout
    (``images/`` and ``labels/``) or a ``.txt`` split file (relative to the YAML's folder) listing
    image paths relative to ``path``, one per line.
    """

    path: str
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    pseudo: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=lambda: ["cell"])
    modality: typing.Optional[str] = None   # weakly stage: keep only images of this modality
    meta: typing.Optional[str] = None       # CSV (relative to path) with name,modality columns
    # Named sources with their share of every training epoch (utils.sampling); empty = uniform.
    sources: dict[str, SourceSpec] = field(default_factory=dict)
    epoch_size: typing.Optional[int] = None   # training samples per epoch (None = the split's size)
    yaml_dir: str = "."                     # set by load_data_config, not by users

    def __post_init__(self):
        if self.names != ["cell"]:
            raise ValueError("only one class is supported: names: [cell]")
        if self.modality not in (None, "bf", "fl", "gs"):
            raise ValueError(f"modality must be bf, fl or gs, got {self.modality}")

    @property
    def root(self) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else (Path(self.yaml_dir) / p).resolve()


_SPLIT_KEYS = ("train", "val", "unlabeled", "pseudo")   # entries: split files or folders


def _rebased(data: dict, src: Path, dst: Path) -> dict:
    """``data``'s relative ``path`` and split/CSV entries, read in folder ``src``, for folder ``dst``."""
    if src == dst:
        return data
    out = dict(data)
    if "path" in out and not Path(str(out["path"])).expanduser().is_absolute():
        out["path"] = str((src / Path(str(out["path"])).expanduser()).resolve())
    for key in _SPLIT_KEYS:
        entries = out.get(key)
        if isinstance(entries, (str, list)):
            entries = [entries] if isinstance(entries, str) else entries
            out[key] = [str(src / e) if isinstance(e, str) and e.lower().endswith((".txt", ".csv"))
                        and not Path(e).expanduser().is_absolute() else e for e in entries]
    return out


def _data_mapping(path: Path, chain: tuple = ()) -> dict:
    """The mapping of a dataset YAML, with ``extends: BASE.yaml`` merged: its keys override BASE's."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{chain[0]}: extends forms a cycle through {path}")
    data = load_yaml(path)
    if "yaml_dir" in data:
        raise ConfigError(f"{path}: unknown key(s) yaml_dir")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be the path of a dataset YAML")
    base_path = (path.parent / Path(base).expanduser()).resolve()
    merged = _rebased(_data_mapping(base_path, chain + (path,)), base_path.parent, path.parent)
    merged.update(data)
    return merged


def load_data_config(path) -> DataConfig:
    """Load a dataset YAML; relative paths resolve against the YAML file's folder.

    ``extends: BASE.yaml`` (relative to the file) starts from BASE's keys, which the file's own
    keys replace whole (a ``train`` list replaces BASE's list, ``sources`` its mapping); BASE's
    relative paths keep pointing where they pointed from BASE's folder.
    """
    data = _data_mapping(Path(path))
    data["yaml_dir"] = str(Path(path).resolve().parent)
    return from_dict(DataConfig, data, str(path))
