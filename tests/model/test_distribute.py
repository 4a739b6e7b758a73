from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import model.distribute as dist  # noqa: E402
from model.distribute import (  # noqa: E402
    HardwareError,
    describe,
    get_strategy,
    mixed_precision_policy,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def test_hardware_error_is_a_runtime_error():
    assert issubclass(HardwareError, RuntimeError)


def test_default():
    strategy = get_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    info = describe(strategy)
    assert info["num_replicas"] == 1
    assert info["kind"] == ("gpu" if HAS_GPU else "cpu")
    assert len(info["devices"]) == 1
    json.dumps(info)


def test_unknown_name():
    with pytest.raises(ValueError, match="default, mirrored, multiworker, tpu"):
        get_strategy("horovod")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_mirrored_without_gpu():
    with pytest.raises(HardwareError, match="no GPU") as err:
        get_strategy("mirrored")
    assert "'default'" in str(err.value)


def test_mirrored_explicit_devices():
    strategy = get_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert describe(strategy)["num_replicas"] == 1
    with pytest.raises(HardwareError, match="GPU:7 not found"):
        get_strategy("mirrored", devices=["/cpu:0", "/device:GPU:7"])
    with pytest.raises(HardwareError, match="empty"):
        get_strategy("mirrored", devices=[])


def test_multiworker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(HardwareError, match="TF_CONFIG"):
        get_strategy("multiworker")


GOOD_CLUSTER = {"worker": ["localhost:12345", "localhost:12346"]}


@pytest.mark.parametrize(
    ("tf_config", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), 'no "cluster"'),
        (json.dumps({"cluster": {"worker": []}, "task": {}}), "non-empty list"),
        (json.dumps({"cluster": GOOD_CLUSTER}), 'no "task"'),
        (
            json.dumps({"cluster": GOOD_CLUSTER, "task": {"type": "chief", "index": 0}}),
            "task type 'chief'",
        ),
        (
            json.dumps({"cluster": GOOD_CLUSTER, "task": {"type": "worker", "index": 2}}),
            "task index 2",
        ),
    ],
)
def test_multiworker_malformed_tf_config(monkeypatch, tf_config, match):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(HardwareError, match=match):
        get_strategy("multiworker")


def test_tpu_absent_fails_fast_and_clearly():
    """Run apart: connecting to a TPU cluster would reconfigure this process's TF context."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "_tpu_cases.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 100
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, result in out.items():
        assert result["error"] == "HardwareError", (case, result)
        assert result["seconds"] < 15, (case, result)
    assert "'local'" in out["local"]["message"] and "TPU VM" in out["local"]["message"]
    assert "no-such-tpu-ssald-test" in out["name"]["message"]
    assert "us-central1-f" in out["name_zone_project"]["message"]
    assert "no-such-project-ssald" in out["name_zone_project"]["message"]
    assert "does not answer" in out["address"]["message"]
    assert "needs a TPU" in out["empty"]["message"]


def test_mixed_precision_policy(monkeypatch):
    default = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="auto, on or off"):
        mixed_precision_policy(default, "yes")
    monkeypatch.setattr(dist, "strategy_kind", lambda s: "cpu")
    assert mixed_precision_policy(default, "auto") == "float32"
    assert mixed_precision_policy(default, "off") == "float32"
    assert mixed_precision_policy(default, "on") == "mixed_bfloat16"
    monkeypatch.setattr(dist, "strategy_kind", lambda s: "tpu")
    assert mixed_precision_policy(default, "auto") == "mixed_bfloat16"
    assert mixed_precision_policy(default, "off") == "float32"
    monkeypatch.setattr(dist, "strategy_kind", lambda s: "gpu")
    monkeypatch.setattr(dist, "_gpus_have_tensor_cores", lambda: True)
    assert mixed_precision_policy(default, "auto") == "mixed_float16"
    monkeypatch.setattr(dist, "_gpus_have_tensor_cores", lambda: False)
    assert mixed_precision_policy(default, "auto") == "float32"
    assert mixed_precision_policy(default, "on") == "mixed_float16"


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_mixed_precision_policy_real_cpu():
    assert mixed_precision_policy(get_strategy("default"), "auto") == "float32"
