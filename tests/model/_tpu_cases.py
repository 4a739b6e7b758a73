"""Helper run in a subprocess by test_distribute.py: get_strategy('tpu', ...) without a TPU.

Run apart from the test process because connecting to a TPU cluster reconfigures TensorFlow's
eager context. Prints one JSON line: for each case the exception's type, message and seconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from model.distribute import get_strategy  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    "empty": {"tpu": ""},
    "name": {"tpu": "no-such-tpu-ssald-test"},
    "name_zone_project": {
        "tpu": "no-such-tpu-ssald-test",
        "zone": "us-central1-f",
        "project": "no-such-project-ssald",
    },
    "address": {"tpu": f"grpc://127.0.0.1:{closed_port()}"},
    "local": {"tpu": "local"},
}


def main() -> None:
    out = {}
    for case, kwargs in CASES.items():
        t0 = time.monotonic()
        try:
            strategy = get_strategy("tpu", **kwargs)
            result = {"error": None, "message": type(strategy).__name__}
        except Exception as exc:  # noqa: BLE001 - report whatever happens
            result = {"error": type(exc).__name__, "message": str(exc)}
        result["seconds"] = time.monotonic() - t0
        out[case] = result
    print(json.dumps(out))


if __name__ == "__main__":
    main()
