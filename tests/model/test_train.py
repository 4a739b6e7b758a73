"""python -m model.train end to end on real GZ2 images: export, resume after a kill, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from model.config import Config
from model.train import main as train_main
from tests.conftest import DATA

GZ2 = DATA / "gz2" / "images"
TINY = [
    "--set",
    "encoder.width=8",
    "--set",
    "encoder.depths=[1,1]",
    "--set",
    "encoder.input_size=32",
    "--set",
    "vicreg.projector=[32,32]",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gz2")
    for p in sorted(GZ2.glob("*.jpg"))[:64]:
        shutil.copy(p, folder)
    return folder


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_exports_a_safe_encoder_with_card(images, tmp_path):
    out = tmp_path / "run"
    rc = train_main(
        [
            "--data",
            str(images),
            "--out",
            str(out),
            *TINY,
            "--set",
            "train.epochs=2",
            "--set",
            "train.checkpoint_every=4",
            "--probe",
            str(DATA / "gz2"),
            "--probe-size",
            "40",
        ]
    )
    assert rc == 0
    from model.export import load_encoder

    encoder, card = load_encoder(out / "encoder.keras")
    assert card["input"]["scaling"]["kind"] == "uint8"
    assert card["data"]["count"] == 64 and card["metrics"]["steps"] == 8
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    assert encoder(x).shape == (4, 128)
    lines = _metrics(out)
    train = [r for r in lines if r.get("event") == "train"]
    assert {
        "loss",
        "invariance",
        "variance",
        "covariance",
        "rankme",
        "lr",
        "images_per_s",
        "epoch",
        "step",
    } <= set(train[-1])
    assert [r["step"] for r in train] == list(range(1, 9))
    probes = [r for r in lines if r.get("event") == "probe"]
    assert [p["step"] for p in probes] == [4, 8]
    assert 0 <= probes[-1]["knn_balanced_accuracy"] <= 1 and probes[-1]["rankme_labelled"] > 1
    state = json.loads((out / "run.json").read_text())
    assert state["state"] == "finished" and state["encoder"].endswith("encoder.keras")
    assert any((out / "tensorboard").rglob("events.out.tfevents*"))


def test_killed_run_resumes_on_the_same_schedule(images, tmp_path):
    out = tmp_path / "run"
    args = [
        "--data",
        str(images),
        "--out",
        str(out),
        *TINY,
        "--set",
        "train.epochs=8",
        "--set",
        "train.checkpoint_every=4",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "model.train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step_at_kill = json.loads(latest.read_text())["step"]
    first = _metrics(out)
    assert train_main(args) == 0
    lines = _metrics(out)[len(first) :]
    assert lines[0]["event"] == "start" and lines[0]["step"] == step_at_kill
    resumed = [r for r in lines if r.get("event") == "train"]
    assert resumed[0]["step"] == step_at_kill + 1
    assert resumed[-1]["step"] == 32  # 8 epochs x 4 steps: the same plan as before the kill
    # the learning rate follows the one schedule: same step, same rate as the first process
    before = {r["step"]: r["lr"] for r in first if r.get("event") == "train"}
    from model.train import lr_schedule

    sched = lr_schedule(Config.load(out / "config.json"), 32, 4)
    for r in resumed[:3] + [resumed[-1]]:
        assert r["lr"] == pytest.approx(float(sched(r["step"])), rel=1e-5)
    for step, lr in before.items():
        assert lr == pytest.approx(float(sched(step)), rel=1e-5)


def _err(capsys):
    return capsys.readouterr().err


def test_bad_inputs_give_one_line_errors(images, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"epochz": 3}}))
    assert train_main(["--config", str(cfg), "--data", str(images)]) == 2
    assert "epochz" in _err(capsys)

    assert (
        train_main(
            ["--data", str(images), "--out", str(tmp_path / "b"), *TINY, "--set", "encoder.bands=5"]
        )
        == 2
    )
    err = _err(capsys)
    assert "5" in err and "3" in err and "band" in err.lower()

    bad = tmp_path / "bad"
    shutil.copytree(images, bad)
    (bad / "broken.jpg").write_bytes((images / sorted(os.listdir(images))[0]).read_bytes()[:300])
    assert train_main(["--data", str(bad), "--out", str(tmp_path / "c"), *TINY]) == 2
    assert "broken.jpg" in _err(capsys)

    assert (
        train_main(
            [
                "--data",
                str(images),
                "--out",
                str(tmp_path / "d"),
                *TINY,
                "--strategy",
                "tpu",
                "--tpu",
                "no-such-tpu-xyz",
            ]
        )
        == 2
    )
    assert "no-such-tpu-xyz" in _err(capsys)


def test_checkpoint_of_another_architecture_is_refused(images, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        train_main(
            [
                "--data",
                str(images),
                "--out",
                str(out),
                *TINY,
                "--set",
                "train.epochs=1",
                "--set",
                "train.checkpoint_every=2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = train_main(["--data", str(images), "--out", str(out), *TINY, "--set", "encoder.width=16"])
    assert rc == 2 and "another architecture" in _err(capsys)
    # and a checkpoint file swapped in from another run is caught on restore
    other = tmp_path / "other"
    assert (
        train_main(
            [
                "--data",
                str(images),
                "--out",
                str(other),
                *TINY,
                "--set",
                "encoder.width=16",
                "--set",
                "train.epochs=1",
                "--set",
                "train.checkpoint_every=2",
            ]
        )
        == 0
    )
    for p in (out / "checkpoints").glob("ckpt-*"):
        p.unlink()
    src = sorted((other / "checkpoints").glob("ckpt-*"))[-1]
    shutil.copy(src, out / "checkpoints" / src.name)
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"file": src.name, "step": 4}))
    capsys.readouterr()
    assert (
        train_main(["--data", str(images), "--out", str(out), *TINY, "--set", "train.epochs=2"])
        == 2
    )
    assert "another architecture" in _err(capsys)


def test_missing_checkpoint_file_is_an_error_not_a_silent_restart(images, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.json").write_text(
        json.dumps({"file": "ckpt-000000008.weights.h5", "step": 8})
    )
    assert train_main(["--data", str(images), "--out", str(out), *TINY]) == 2
    assert "ckpt-000000008.weights.h5" in _err(capsys)
