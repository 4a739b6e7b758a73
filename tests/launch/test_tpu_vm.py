"""The Cloud TPU VM launcher: exact gcloud command lines, and the whole flow with a recording
``gcloud`` on PATH that plays the VM on this machine (its ``ssh --command`` runs the command
in a real shell here, so the remote side is exercised for real, model.train included)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest

from ssald_desktop.core.launch import (
    LaunchError,
    RunRegistry,
    TpuVmLauncher,
    gcloud_create,
    gcloud_delete,
    gcloud_describe,
    gcloud_scp,
    gcloud_ssh,
    launch,
    make_launcher,
    require_gcloud,
)
from ssald_desktop.core.launch.tpu import parse_tpu_target
from tests.launch.conftest import REMOTE_PYTHON, tiny_config

P, Z, N = "my-project-123", "europe-west4-a", "ssald-v3"


def test_gcloud_command_lines_exactly():
    assert gcloud_create(P, Z, N, "v3-8", "tpu-vm-tf-2.16.1-pjrt") == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", N, f"--zone={Z}", f"--project={P}",
        "--accelerator-type=v3-8", "--version=tpu-vm-tf-2.16.1-pjrt", "--quiet"]
    assert gcloud_create(P, Z, N, "v2-8", spot=True)[-2:] == ["--spot", "--quiet"]
    assert gcloud_describe(P, Z, N) == [
        "gcloud", "compute", "tpus", "tpu-vm", "describe", N, f"--zone={Z}", f"--project={P}",
        "--format=json"]
    evil = "cd '/a b'; echo $(id) `x` \"q\""
    assert gcloud_ssh(P, Z, N, evil) == [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", N, f"--zone={Z}", f"--project={P}",
        "--worker=0", "--quiet", f"--command={evil}", "--", "-o", "BatchMode=yes",
        "-o", "ServerAliveInterval=15"]
    assert gcloud_scp(P, Z, N, "/home/u/ssald-runs/r1/results.tar.gz", "/tmp/x") == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", f"{N}:/home/u/ssald-runs/r1/results.tar.gz",
        "/tmp/x", f"--zone={Z}", f"--project={P}", "--worker=0", "--quiet"]
    assert gcloud_scp(P, Z, N, "a/b", "c", recurse=True)[-1] == "--recurse"
    assert gcloud_delete(P, Z, N) == [
        "gcloud", "compute", "tpus", "tpu-vm", "delete", N, f"--zone={Z}", f"--project={P}",
        "--quiet"]


def test_targets_and_values_are_checked():
    assert parse_tpu_target(f"tpu-vm://{P}/{Z}/{N}") == (P, Z, N)
    for bad, msg in [(f"tpu-vm://{P}/{Z}", "PROJECT/ZONE/NAME"),
                     (f"tpu-vm://{P}/{Z}/Bad_Name", "not a TPU name"),
                     (f"tpu-vm://{P}/zone;rm/{N}", "not a Google Cloud zone"),
                     (f"tpu-vm://x/{Z}/{N}", "not a Google Cloud project id")]:
        with pytest.raises(LaunchError, match=msg):
            make_launcher(bad)
    with pytest.raises(LaunchError, match="not a TPU accelerator type"):
        make_launcher(f"tpu-vm://{P}/{Z}/{N}", accelerator_type="v3-8; reboot")
    with pytest.raises(LaunchError, match="gs:// URI"):
        make_launcher(f"tpu-vm://{P}/{Z}/{N}", gcs_dir="/local/folder")
    with pytest.raises(LaunchError, match="path must be"):
        gcloud_scp(P, Z, N, "a b", "c")
    launcher = make_launcher(f"tpu-vm://{P}/{Z}/{N}", accelerator_type="v2-8")
    assert isinstance(launcher, TpuVmLauncher)
    assert launcher.target() == f"tpu-vm://{P}/{Z}/{N}"
    assert TpuVmLauncher.from_settings(launcher.settings()).settings() == launcher.settings()


def test_missing_gcloud_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud anywhere on PATH
    with pytest.raises(LaunchError, match="cloud.google.com/sdk/docs/install"):
        require_gcloud()
    from ssald_desktop.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config()))
    status = main(["train", "--target", f"tpu-vm://{P}/{Z}/{N}", "--config", str(config),
                   "--data", "gs://bucket/shards", "--gcs-dir", "gs://bucket/runs",
                   "--registry", str(tmp_path / "reg")])
    err = capsys.readouterr().err
    assert status == 2 and "gcloud) is not installed" in err and "sdk/docs/install" in err


def test_tpu_needs_gs_data(tmp_path):
    launcher = make_launcher(f"tpu-vm://{P}/{Z}/{N}", gcs_dir="gs://b/runs")
    with pytest.raises(LaunchError, match="reads its data from Cloud Storage"):
        launch(launcher, tiny_config(), "/local/images", registry=RunRegistry(tmp_path / "r"))


FAKE_GCLOUD = r'''#!{python}
"""A recording gcloud: the TPU VM is this machine; gs://BUCKET/... is {gcs}/BUCKET/..."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\n")
state = {state!r}
def local(uri):
    return os.path.join({gcs!r}, uri[len("gs://"):])
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    if not os.path.exists(state):
        sys.stderr.write("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: "
                         "Resource 'projects/p/locations/z/nodes/n' was not found\n")
        sys.exit(1)
    print(json.dumps({{"name": args[4], "state": open(state).read().strip()}}))
elif args[:4] == ["compute", "tpus", "tpu-vm", "create"]:
    open(state, "w").write("READY")
elif args[:4] == ["compute", "tpus", "tpu-vm", "delete"]:
    os.remove(state)
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    os.execvp("sh", ["sh", "-c", command])   # the VM's shell interprets the command
elif args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    shutil.copy(args[4].split(":", 1)[1], args[5])
elif args[:2] == ["storage", "rsync"] and "--recursive" in args:
    src, dst = [a for a in args[2:] if not a.startswith("-")]
    shutil.copytree(src, local(dst), dirs_exist_ok=True)
else:
    sys.stderr.write("fake gcloud: unexpected %r\n" % (args,))
    sys.exit(2)
'''


@pytest.fixture()
def fake_gcloud(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, gcs, state = tmp_path / "gcloud.log", tmp_path / "gcs", tmp_path / "vm-state"
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable, log=str(log), gcs=str(gcs),
                                         state=str(state)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("gcloud") == str(script)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return {"calls": calls, "gcs": gcs, "state": state}


def test_whole_flow_through_gcloud(fake_gcloud, tmp_path):
    """Create the VM, start with --strategy tpu --tpu local, sync to gs://, report, fetch."""
    launcher = make_launcher(f"tpu-vm://{P}/{Z}/{N}", python=REMOTE_PYTHON,
                             workdir=str(tmp_path / "vm-home" / "ssald-runs"),
                             gcs_dir="gs://bucket/runs", min_free_bytes=1024**2)
    registry = RunRegistry(tmp_path / "reg")
    run = launch(launcher, tiny_config(), "gs://bucket/shards", name="tpu",
                 registry=registry)
    calls = fake_gcloud["calls"]()
    assert calls[0] == gcloud_describe(P, Z, N)[1:]
    assert calls[1] == gcloud_create(P, Z, N, "v3-8", "tpu-vm-tf-2.16.1-pjrt")[1:]
    ssh_calls = [c for c in calls[2:] if c[3] == "ssh"]
    assert len(ssh_calls) == 3  # probe, upload, start: nothing else
    for c in ssh_calls:  # the exact argument list, around the command it carried
        assert c == gcloud_ssh(P, Z, N, c[9][len("--command="):])[1:]
    start = ssh_calls[2][9][len("--command="):]
    words = shlex.split(start)  # as the VM's shell splits it (quoted parts stay whole)
    detached = words[words.index("setsid"):words.index(">>")]
    assert detached[:4] == ["setsid", "nohup", "sh", "-c"]
    train = detached[detached.index("env"):]
    assert train[:5] == ["env", "PYTHONUNBUFFERED=1", REMOTE_PYTHON, "-m", "model.train"]
    assert train[train.index("--strategy") + 1] == "tpu"
    assert train[train.index("--tpu") + 1] == "local"
    assert train[train.index("--data") + 1] == "gs://bucket/shards"
    assert detached[6] == f"gs://bucket/runs/{run.id}"  # the wrapper's sync target
    assert run.record.settings["vm"] == "created"
    # There is no TPU here: model.train's own hardware error comes back, with the log.
    with pytest.raises(LaunchError, match="TPU") as info:
        run.wait(interval=0.5, timeout=120)
    assert "last log lines" in str(info.value)
    # The run folder was copied to "gs://" when the run ended.
    synced = fake_gcloud["gcs"] / "bucket" / "runs" / run.id
    assert json.loads((synced / "run.json").read_text())["state"] == "failed"
    assert (synced / "launch-config.json").exists()
    # Fetch goes through gcloud ssh (pack) and gcloud scp; a failed run has nothing to fetch.
    with pytest.raises(LaunchError, match="nothing to fetch yet"):
        run.fetch(tmp_path / "got")
    last = fake_gcloud["calls"]()[-1]
    assert last == gcloud_scp(P, Z, N, f"{run.record.remote_dir}/results.tar.gz",
                              last[5])[1:]
    assert json.loads((tmp_path / "got" / "run.json").read_text())["state"] == "failed"
    # A second launch reuses the READY VM (describe, no create).
    before = len(fake_gcloud["calls"]())
    assert launcher.ensure_vm() == "reused"
    assert [c[3] for c in fake_gcloud["calls"]()[before:]] == ["describe"]
    launcher.delete_vm()
    assert fake_gcloud["calls"]()[-1] == gcloud_delete(P, Z, N)[1:]
    assert launcher.vm_state() is None


def test_vm_not_ready_is_explained(fake_gcloud, tmp_path):
    fake_gcloud["state"].write_text("STOPPED")
    launcher = make_launcher(f"tpu-vm://{P}/{Z}/{N}", gcs_dir="gs://b/r")
    with pytest.raises(LaunchError, match="is STOPPED, not READY.*tpu-vm start ssald-v3"):
        launcher.ensure_vm()
    fake_gcloud["state"].unlink()
    off = make_launcher(f"tpu-vm://{P}/{Z}/{N}", gcs_dir="gs://b/r", create=False)
    with pytest.raises(LaunchError, match="no such TPU VM"):
        off.ensure_vm()
    assert not Path(fake_gcloud["state"]).exists()
