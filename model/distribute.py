"""``tf.distribute`` strategies by name, with clear errors when the hardware is absent.

``get_strategy`` is called once, at the start of a training process, before any model is built;
the model must then be created inside ``strategy.scope()``. Names:

- ``default``: the current (default) strategy: one device, the first GPU if there is one.
- ``mirrored``: synchronous data parallelism over the local GPUs (``MirroredStrategy``).
- ``multiworker``: ``MultiWorkerMirroredStrategy`` over the machines listed in ``TF_CONFIG``.
- ``tpu``: ``TPUStrategy`` on a Cloud TPU found by name (with zone and project), a
  ``grpc://host:port`` address, or ``local`` on a TPU VM.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import tensorflow as tf

__all__ = [
    "STRATEGIES",
    "HardwareError",
    "describe",
    "get_strategy",
    "mixed_precision_policy",
    "strategy_kind",
]

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")

_NETWORK_TIMEOUT_S = 3.0
_GCE_METADATA = ("169.254.169.254", 80)
_TPU_API = ("tpu.googleapis.com", 443)


class HardwareError(RuntimeError):
    """The requested accelerator or cluster is not available to this process."""


def get_strategy(
    name: str,
    tpu: str = "",
    zone: str = "",
    project: str = "",
    devices: Sequence[str] | None = None,
) -> tf.distribute.Strategy:
    """Create a distribution strategy by name.

    Parameters
    ----------
    name : {"default", "mirrored", "multiworker", "tpu"}
        Which strategy.
    tpu : str
        For ``tpu``: the Cloud TPU name, a ``grpc://host:port`` address, or ``"local"`` on a
        TPU VM.
    zone, project : str
        For a TPU given by name: its Google Cloud zone and project (looked up from the GCE
        metadata server when empty, which works only on Google Cloud).
    devices : sequence of str, optional
        For ``mirrored``: explicit devices (e.g. ``["/cpu:0", "/cpu:1"]`` for two logical CPU
        devices in tests) instead of all local GPUs.

    Returns
    -------
    tf.distribute.Strategy

    Raises
    ------
    HardwareError
        No GPU for ``mirrored``, no or a malformed ``TF_CONFIG`` for ``multiworker``, a TPU that
        cannot be found, reached or initialised for ``tpu``.
    ValueError
        An unknown strategy name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored(devices)
    if name == "multiworker":
        return _multiworker()
    if name == "tpu":
        return _tpu(tpu, zone, project)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _mirrored(devices: Sequence[str] | None) -> tf.distribute.Strategy:
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            raise HardwareError(
                "strategy 'mirrored' needs local GPUs, but TensorFlow found no GPU on this "
                "machine (check the NVIDIA driver and that a GPU build of TensorFlow is "
                "installed); use strategy 'default' to train on the CPU"
            )
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    devices = list(devices)
    if not devices:
        raise HardwareError("strategy 'mirrored': the device list is empty")
    available = {_device_key(d.name): d.name for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if _device_key(d) not in available]
    if missing:
        raise HardwareError(
            f"strategy 'mirrored': device(s) {', '.join(missing)} not found; "
            f"available: {', '.join(sorted(available.values()))}"
        )
    return tf.distribute.MirroredStrategy(devices)


def _device_key(name: str) -> tuple[str, int]:
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), int(spec.device_index or 0)


def _multiworker() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise HardwareError(
            "strategy 'multiworker' needs the TF_CONFIG environment variable (JSON with "
            '"cluster": {"worker": ["host:port", ...]} and "task": {"type": "worker", '
            '"index": i}), set on every worker; it is not set'
        )
    _check_tf_config(raw)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise HardwareError(
            f"strategy 'multiworker' could not start from TF_CONFIG: {exc}"
        ) from exc


def _check_tf_config(raw: str) -> None:
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HardwareError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(cfg, dict):
        raise HardwareError(f"TF_CONFIG must be a JSON object, got {raw[:200]!r}")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise HardwareError(
            'TF_CONFIG has no "cluster" object (e.g. {"worker": ["host1:port", "host2:port"]})'
        )
    for job, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and a for a in addresses)
        ):
            raise HardwareError(
                f'TF_CONFIG cluster job "{job}" must be a non-empty list of "host:port" strings'
            )
    if not isinstance(task, dict):
        raise HardwareError('TF_CONFIG has no "task" object (e.g. {"type": "worker", "index": 0})')
    job, index = task.get("type"), task.get("index")
    if job not in cluster:
        raise HardwareError(
            f"TF_CONFIG task type {job!r} is not a job of the cluster ({', '.join(cluster)})"
        )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise HardwareError(
            f'TF_CONFIG task index {index!r} is not in 0..{len(cluster[job]) - 1} for job "{job}"'
        )


def _tpu(name: str, zone: str, project: str) -> tf.distribute.Strategy:
    where = f"TPU {name!r}" + (f" (zone {zone!r}, project {project!r})" if zone or project else "")
    if not name:
        raise HardwareError(
            "strategy 'tpu' needs a TPU: give its name (with zone and project), a "
            "grpc://host:port address, or 'local' when running on a TPU VM"
        )
    is_local = name == "local"
    is_address = name.startswith("grpc://")
    if not (is_local or is_address):
        # Looking a TPU up by name goes to the Cloud TPU API (and to the GCE metadata server when
        # zone or project is missing); without them the client can block for a long time.
        if not (zone and project) and not _reachable(*_GCE_METADATA):
            raise HardwareError(
                f"cannot look up {where}: zone and project were not given and this machine is "
                "not on Google Cloud (no metadata server); pass the TPU's zone and project"
            )
        if not _reachable(*_TPU_API):
            raise HardwareError(
                f"cannot look up {where}: the Cloud TPU API (tpu.googleapis.com) is not "
                "reachable from this machine; check the network, or run on the TPU VM with "
                "tpu='local'"
            )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=name, zone=zone or None, project=project or None
        )
        if not is_local:
            master = resolver.master()
            host_port = _host_port(master)
            if host_port is not None and not _reachable(*host_port):
                raise HardwareError(
                    f"{where} resolves to {master}, which does not answer; check that the TPU "
                    "is READY (gcloud compute tpus list) and that this machine is in its network"
                )
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except HardwareError:
        raise
    except Exception as exc:  # resolver, API client (HttpError...), TF runtime: all mean no TPU
        hint = (
            "is this a TPU VM with a TPU build of TensorFlow (tensorflow-tpu / libtpu)?"
            if is_local
            else "check the TPU name, zone and project (gcloud compute tpus list), that it is "
            "READY, and that the Cloud TPU client (cloud-tpu-client) is installed"
        )
        raise HardwareError(
            f"cannot use {where}: {type(exc).__name__}: {_first_line(exc)}; {hint}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _host_port(address: str) -> tuple[str, int] | None:
    if not address:
        return None
    parsed = urlparse(address if "://" in address else "grpc://" + address)
    if not parsed.hostname or not parsed.port:
        return None
    return parsed.hostname, parsed.port


def _reachable(host: str, port: int, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port succeeds within ``timeout`` (DNS included)."""

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def strategy_kind(strategy: tf.distribute.Strategy) -> str:
    """The kind of device a strategy computes on: ``"tpu"``, ``"gpu"`` or ``"cpu"``."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    devices = _devices(strategy)
    if any("GPU" in d.upper() for d in devices):
        return "gpu"
    if any("TPU" in d.upper() for d in devices):
        return "tpu"
    return "cpu"


def _devices(strategy: tf.distribute.Strategy) -> list[str]:
    try:
        return [str(d) for d in strategy.extended.worker_devices]
    except (RuntimeError, AttributeError, NotImplementedError):
        # The default strategy places ops on the first GPU when there is one.
        gpus = tf.config.list_logical_devices("GPU")
        return [gpus[0].name] if gpus else [tf.config.list_logical_devices("CPU")[0].name]


def describe(strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """A JSON-ready summary of a strategy.

    Returns
    -------
    dict
        ``name`` (class name), ``kind`` (cpu/gpu/tpu), ``num_replicas`` and ``devices``.
    """
    return {
        "name": type(strategy).__name__,
        "kind": strategy_kind(strategy),
        "num_replicas": int(strategy.num_replicas_in_sync),
        "devices": _devices(strategy),
    }


def mixed_precision_policy(strategy: tf.distribute.Strategy, setting: str = "auto") -> str:
    """The Keras dtype policy to train with.

    Parameters
    ----------
    strategy : tf.distribute.Strategy
        The training strategy.
    setting : {"auto", "on", "off"}
        ``off``: always ``float32``. ``auto``: ``mixed_bfloat16`` on TPU, ``mixed_float16`` on
        GPUs with compute capability >= 7.0 (tensor cores), ``float32`` otherwise (CPU).
        ``on``: mixed precision whatever the device (``mixed_bfloat16`` on TPU and CPU,
        ``mixed_float16`` on GPU).

    Returns
    -------
    str
        A name for ``keras.mixed_precision.set_global_policy``.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"mixed precision setting must be auto, on or off, got {setting!r}")
    if setting == "off":
        return "float32"
    kind = strategy_kind(strategy)
    if kind == "tpu":
        return "mixed_bfloat16"
    if kind == "gpu":
        if setting == "on" or _gpus_have_tensor_cores():
            return "mixed_float16"
        return "float32"
    return "mixed_bfloat16" if setting == "on" else "float32"


def _gpus_have_tensor_cores() -> bool:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        try:
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        except (ValueError, RuntimeError):
            cc = None
        if cc is None or tuple(cc) < (7, 0):
            return False
    return True
