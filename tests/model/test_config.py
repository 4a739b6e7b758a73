import json

import pytest

from model.config import ENCODER_PRESETS, Config, ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = Config().validate()
    path = tmp_path / "c.json"
    cfg.save(path)
    assert Config.load(path) == cfg


def test_preset_fills_unset_fields_and_explicit_values_win():
    cfg = Config.from_dict({"encoder": {"preset": "resnet50", "bands": 5}})
    assert cfg.encoder.depths == ENCODER_PRESETS["resnet50"]["depths"]
    assert cfg.encoder.bottleneck is True and cfg.encoder.bands == 5
    cfg = Config.from_dict({"encoder": {"preset": "resnet50", "width": 32}})
    assert cfg.encoder.width == 32


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"encoder": {"widht": 3}}, "unknown key.*widht.*'encoder'"),
        ({"trian": {}}, "unknown configuration section.*trian"),
        ({"train": {"epochs": "3"}}, "train.epochs must be an integer"),
        ({"train": {"epochs": True}}, "train.epochs must be an integer"),
        ({"encoder": {"preset": "resnet9000"}}, "encoder.preset"),
        ({"encoder": {"input_size": 50}}, "multiple of 16"),
        ({"augment": {"crop_scale": [0.9, 0.2]}}, "augment.crop_scale"),
        ({"train": {"strategy": "gpu"}}, "train.strategy"),
        ({"vicreg": {"projector": []}}, "vicreg.projector"),
        ({"data": {"format": "fits"}}, "data.format"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_configs_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(bad)


def test_load_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json.*not valid JSON"):
        Config.load(p)
    p.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="broken.json.*epoch"):
        Config.load(p)
    with pytest.raises(ConfigError, match="no such configuration file"):
        Config.load(tmp_path / "missing.json")


def test_overrides():
    cfg = Config().override(
        ["train.epochs=7", "data.source=/data/with space", "augment.flip=false"]
    )
    assert cfg.train.epochs == 7 and cfg.data.source == "/data/with space"
    assert cfg.augment.flip is False
    with pytest.raises(ConfigError):
        Config().override(["epochs=3"])
    with pytest.raises(ConfigError, match="unknown key"):
        Config().override(["train.epoks=3"])
