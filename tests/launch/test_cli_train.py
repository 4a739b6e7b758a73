"""``ssald-cli train`` and ``ssald-cli runs``: headless, and runs that outlive the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ssald_desktop.cli import main
from tests.launch.conftest import REMOTE_PYTHON, tiny_config

CLI = [sys.executable, "-m", "ssald_desktop.cli"]


def _cli(args, tmp_path, timeout=180):
    env = {**os.environ, "SSALD_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_train_detached_then_attach_over_ssh(sshd, gz2_subset, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config(steps=8)))
    registry = tmp_path / "registry"
    t0 = time.monotonic()
    started = _cli(["train", "--target", sshd.target, "--config", str(config),
                    "--data", str(gz2_subset), "--identity", str(sshd.key),
                    "--python", REMOTE_PYTHON, "--known-hosts", str(tmp_path / "kh"),
                    "--workdir", str(tmp_path / "remote"), "--min-free-gb", "0.001",
                    "--registry", str(registry), "--name", "cli run"], tmp_path)
    assert started.returncode == 0, started.stderr
    assert time.monotonic() - t0 < 30  # returns at once, the run goes on without it
    run_id = re.search(r"^run (\S+) started on ssh://", started.stdout, re.M).group(1)
    assert "runs attach " + run_id in started.stdout
    # A new process reattaches by id, follows to the end and fetches the encoder.
    attached = _cli(["runs", "attach", run_id, "--interval", "1", "--registry", str(registry)],
                    tmp_path)
    assert attached.returncode == 0, attached.stdout + attached.stderr
    out = attached.stdout
    assert re.search(r"step 8/8 \(100%\)  loss [0-9.]+  inv [0-9.]+  var [0-9.]+  cov "
                     r"[0-9.]+  rankme [0-9.]+", out), out
    assert "finished at step 8" in out
    local = registry / "runs" / run_id / "encoder.keras"
    assert f"fetched the encoder to {local}" in out and local.stat().st_size > 10_000
    # list / show / fetch, in this process
    assert main(["runs", "list", "--registry", str(registry), "--json",
                 str(tmp_path / "list.json")]) == 0
    rows = json.loads((tmp_path / "list.json").read_text())
    assert [(r["id"], r["state"], r["step"]) for r in rows] == [(run_id, "finished", 8)]
    assert main(["runs", "show", run_id, "--registry", str(registry), "--json",
                 str(tmp_path / "show.json")]) == 0
    shown = json.loads((tmp_path / "show.json").read_text())
    assert shown["state"] == "finished" and shown["progress"] == 1.0
    assert main(["runs", "fetch", run_id, "--dest", str(tmp_path / "got"), "--registry",
                 str(registry)]) == 0
    assert (tmp_path / "got" / "encoder.keras").exists()
    assert (tmp_path / "got" / "checkpoints" / "latest.json").exists()
    capsys.readouterr()
    assert main(["runs", "stop", run_id, "--registry", str(registry)]) == 0
    assert "finished" in capsys.readouterr().out  # stopping an ended run changes nothing


def test_train_wait_reports_a_crash(gz2_subset, tmp_path, tiny_config_file, capsys):
    """A training process that dies (here a stand-in Python killed by a fatal error) fails the
    command with its last log lines. (model.train's own errors are checked in test_tpu_vm.)"""
    fake = tmp_path / "python-that-crashes"
    fake.write_text("#!/bin/sh\necho 'epoch 1/3'\n"
                    "echo 'RuntimeError: CUDA out of memory' >&2\nexit 1\n")
    fake.chmod(0o755)
    status = main(["train", "--target", "local", "--config", str(tiny_config_file), "--data",
                   str(gz2_subset), "--python", str(fake), "--wait", "--interval", "0.2",
                   "--registry", str(tmp_path / "reg")])
    err = capsys.readouterr().err
    assert status == 2
    assert "failed: model.train exited with status 1; last log lines:" in err
    assert "epoch 1/3" in err and "RuntimeError: CUDA out of memory" in err


def test_bad_targets_are_one_line_errors(tmp_path, tiny_config_file, gz2_subset, capsys):
    reg = ["--registry", str(tmp_path / "reg")]
    assert main(["train", "--target", "ssh://nobody@127.0.0.1:1", "--config",
                 str(tiny_config_file), "--data", "/x", "--host-keys", "off", *reg]) == 2
    assert "127.0.0.1:1: connection refused" in capsys.readouterr().err
    assert main(["train", "--target", "ssh://-oProxyCommand=x", "--config",
                 str(tiny_config_file), *reg]) == 2
    assert "'-oproxycommand=x' is not a valid host name" in capsys.readouterr().err
    assert main(["train", "--target", "nowhere", "--config", str(tiny_config_file),
                 "--data", str(gz2_subset), *reg]) == 2
    assert "not a training target" in capsys.readouterr().err
    assert main(["runs", "show", "20990101-000000-x-0000", *reg]) == 2
    assert "no run '20990101-000000-x-0000'" in capsys.readouterr().err
    assert main(["runs", "list", *reg]) == 0
    assert "no runs in" in capsys.readouterr().out


def test_train_without_data_names_the_config(tmp_path, tiny_config_file, capsys):
    assert main(["train", "--config", str(tiny_config_file), "--registry",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "tiny.json: no data.source" in err and "--data" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.json"), "--data", "x"]) == 2
    assert "nope.json: no such configuration file" in capsys.readouterr().err


def test_cli_commands_are_registered():
    from ssald_desktop.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["runs", "attach", "abc"])
    assert args.func.__name__ == "_attach"
    args = parser.parse_args(["train", "--config", "c.json", "--target", "local", "--wait"])
    assert args.wait and args.target == "local"
    assert Path(args.config).name == "c.json"
