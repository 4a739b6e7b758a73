"""Training configuration: nested dataclasses with strict JSON loading.

A run is described by one JSON file (``python -m model.train --config FILE``); flags override
single values with dotted keys (``--set train.epochs=5``). Unknown keys are errors that name the
key and the section, so a typo never silently falls back to a default.

This module is plain Python (no TensorFlow import), so launchers and the GUI can read and write
configurations cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # ~1.6M parameters: small enough to train on a 2-core CPU at 64 px.
    "small": {"width": 24, "depths": [2, 2, 2, 2], "bottleneck": False, "embedding_dim": 128},
    # A ResNet-18-like basic-block network (~11M parameters).
    "resnet18": {"width": 64, "depths": [2, 2, 2, 2], "bottleneck": False, "embedding_dim": 512},
    # ResNet-50 layout (bottleneck blocks 3-4-6-3, 2048-d features): for GPU/TPU.
    "resnet50": {"width": 64, "depths": [3, 4, 6, 3], "bottleneck": True, "embedding_dim": 2048},
}


class ConfigError(ValueError):
    """A configuration that cannot be used (unknown key, wrong type, bad value)."""


@dataclass
class EncoderConfig:
    """ResNet-style backbone. ``preset`` fills the fields not given explicitly."""

    preset: str = "small"
    bands: int = 3
    input_size: int = 64
    width: int = 24
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    bottleneck: bool = False
    embedding_dim: int = 128

    def validate(self) -> None:
        """Raise ConfigError on impossible values."""
        if self.preset not in ENCODER_PRESETS:
            raise ConfigError(
                f"encoder.preset must be one of {sorted(ENCODER_PRESETS)}, got {self.preset!r}"
            )
        if self.bands < 1 or self.bands > 16:
            raise ConfigError(f"encoder.bands must be 1..16, got {self.bands}")
        if self.input_size < 16 or self.input_size % 16:
            raise ConfigError(
                f"encoder.input_size must be a multiple of 16 >= 16, got {self.input_size}"
            )
        if self.width < 4 or not self.depths or any(d < 1 for d in self.depths):
            raise ConfigError("encoder.width must be >= 4 and encoder.depths positive integers")
        if self.embedding_dim < 2:
            raise ConfigError(f"encoder.embedding_dim must be >= 2, got {self.embedding_dim}")


@dataclass
class AugmentConfig:
    """Two-view augmentations (see model.augment). Ranges are [low, high]."""

    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    flip: bool = True
    rot90: bool = True
    max_shift_px: float = 1.0
    noise_sigma: list[float] = field(default_factory=lambda: [0.0, 1.0])
    blur_sigma_px: list[float] = field(default_factory=lambda: [0.0, 1.0])
    blur_probability: float = 0.5
    flux_scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    strength: float = 1.0

    def validate(self) -> None:
        """Raise ConfigError on impossible values."""
        for name in ("crop_scale", "crop_ratio", "noise_sigma", "blur_sigma_px", "flux_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] < 0:
                raise ConfigError(
                    f"augment.{name} must be [low, high] with 0 <= low <= high, got {lo_hi}"
                )
        if not 0 < self.crop_scale[1] <= 1:
            raise ConfigError(f"augment.crop_scale must lie in (0, 1], got {self.crop_scale}")
        if not 0 <= self.blur_probability <= 1:
            raise ConfigError(
                f"augment.blur_probability must be in [0, 1], got {self.blur_probability}"
            )
        if self.strength < 0:
            raise ConfigError(f"augment.strength must be >= 0, got {self.strength}")


@dataclass
class VICRegConfig:
    """Loss coefficients (Bardes, Ponce & LeCun 2022) and the projector's layer sizes."""

    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    projector: list[int] = field(default_factory=lambda: [512, 512, 512])
    eps: float = 1e-4

    def validate(self) -> None:
        """Raise ConfigError on impossible values."""
        if min(self.sim_coeff, self.std_coeff, self.cov_coeff) < 0:
            raise ConfigError("vicreg coefficients must be >= 0")
        if not self.projector or any(p < 2 for p in self.projector):
            raise ConfigError(
                f"vicreg.projector must be a list of layer sizes >= 2, got {self.projector}"
            )


@dataclass
class DataConfig:
    """Where the images come from: a folder of PNG/JPEG, HDF5 shards or TFRecord shards."""

    source: str = ""
    format: str = "auto"  # auto | images | h5 | tfrecord
    image_key: str = "rgb"  # h5/tfrecord: "rgb" (Lupton uint8) or "images" (band cube)
    validation_fraction: float = 0.0
    shuffle_buffer: int = 2048
    cache: bool = True

    def validate(self) -> None:
        """Raise ConfigError on impossible values."""
        if self.format not in ("auto", "images", "h5", "tfrecord"):
            raise ConfigError(
                f"data.format must be auto, images, h5 or tfrecord, got {self.format!r}"
            )
        if self.image_key not in ("rgb", "images"):
            raise ConfigError(f"data.image_key must be 'rgb' or 'images', got {self.image_key!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(
                f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


@dataclass
class TrainConfig:
    """Optimisation, schedule, distribution and output."""

    epochs: int = 35
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    steps_per_epoch: int = 0  # 0: one pass over the data
    strategy: str = "default"  # default | mirrored | multiworker | tpu
    tpu: str = ""  # TPU name, or "local" on a TPU VM
    tpu_zone: str = ""
    tpu_project: str = ""
    mixed_precision: str = "auto"  # auto | off | on
    checkpoint_every: int = 200  # steps
    out_dir: str = "runs/run"
    seed: int = 0
    log_every: int = 10

    def validate(self) -> None:
        """Raise ConfigError on impossible values."""
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("train.epochs must be >= 1 and train.batch_size >= 2")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError("train.learning_rate must be > 0 and train.weight_decay >= 0")
        if self.strategy not in ("default", "mirrored", "multiworker", "tpu"):
            raise ConfigError(
                "train.strategy must be default, mirrored, multiworker or tpu, "
                f"got {self.strategy!r}"
            )
        if self.mixed_precision not in ("auto", "off", "on"):
            raise ConfigError(
                f"train.mixed_precision must be auto, off or on, got {self.mixed_precision!r}"
            )
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("train.checkpoint_every and train.log_every must be >= 1")


@dataclass
class Config:
    """A whole training run."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    vicreg: VICRegConfig = field(default_factory=VICRegConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> Config:
        """Validate every section; returns self."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Write JSON."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a (possibly partial) dictionary; unknown keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(d).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(
                f"unknown configuration section(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sections)}"
            )
        kwargs = {}
        hints = get_type_hints(cls)
        for name in sections:
            section_cls = hints[name]
            given = d.get(name, {})
            kwargs[name] = _section(section_cls, name, given)
        return cls(**kwargs).validate()

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a JSON configuration file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` overrides (value parsed as JSON, else as a string)."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a or "." not in a.split("=", 1)[0]:
                raise ConfigError(f"override must look like section.key=value, got {a!r}")
            key, raw = a.split("=", 1)
            section, name = key.split(".", 1)
            if section not in d:
                raise ConfigError(f"unknown configuration section {section!r} in {a!r}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            d[section][name] = value
        return Config.from_dict(d)


def _section(section_cls: Any, name: str, given: Any) -> Any:
    if not isinstance(given, dict):
        raise ConfigError(f"section {name!r} must be an object, got {given!r}")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(given) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in section {name!r}; "
            f"known: {', '.join(fields)}"
        )
    values = dict(given)
    if section_cls is EncoderConfig:
        preset = values.get("preset", "small")
        if preset not in ENCODER_PRESETS:
            raise ConfigError(
                f"encoder.preset must be one of {sorted(ENCODER_PRESETS)}, got {preset!r}"
            )
        values = {**ENCODER_PRESETS[preset], **values}
    hints = get_type_hints(section_cls)
    for key, value in values.items():
        values[key] = _coerce(f"{name}.{key}", hints[key], value)
    return section_cls(**values)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list:
        (item,) = hint.__args__
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    return value
