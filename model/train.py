"""``python -m model.train``: VICReg training, locally or on a TPU VM, resumable.

The run folder (``train.out_dir``) holds everything about a run::

    config.json        the full configuration (a resumed run must match it)
    run.json           state: running / finished / failed, pid, step, the exported encoder
    metrics.jsonl      one JSON line every ``log_every`` steps (tailed by the desktop)
    checkpoints/       model + optimizer state every ``checkpoint_every`` steps
    tensorboard/       TensorBoard logs
    encoder.keras      the exported encoder, with encoder.card.json (model card)

``fit`` runs with one Keras "epoch" per checkpoint interval (``steps_per_epoch =
checkpoint_every``), so checkpoints fall on exact steps and a killed run restarts from its last
checkpoint with the optimizer's step counter, hence on the same warm-up + cosine schedule. (The
data order after a resume is a fresh shuffle.)

Errors of configuration, data or hardware print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.config import Config, ConfigError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RUN_FILE = "run.json"


class TrainingError(RuntimeError):
    """A run that cannot start or continue (e.g. a checkpoint of another architecture)."""


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _arch(cfg_dict: dict) -> dict:
    return {"encoder": cfg_dict["encoder"], "vicreg": cfg_dict["vicreg"]}


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run folder, or check that an existing one holds the same architecture."""
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if _arch(old) != _arch(cfg.to_dict()):
            raise TrainingError(
                f"{out} holds a run of another architecture (encoder/vicreg settings differ: "
                f"{json.dumps(_arch(old))}); use a new train.out_dir"
            )
    cfg.save(saved)
    return out


def latest_checkpoint(out: Path) -> tuple[Path | None, int]:
    """The newest checkpoint file and its step (None, 0 when there is none)."""
    index = out / "checkpoints" / "latest.json"
    if not index.exists():
        return None, 0
    info = json.loads(index.read_text())
    path = out / "checkpoints" / info["file"]
    if not path.exists():
        raise TrainingError(
            f"{index} names {info['file']}, which is missing: restore the file or delete "
            "latest.json to restart from step 0"
        )
    return path, int(info["step"])


def lr_schedule(cfg: Config, total_steps: int, steps_per_epoch: int) -> Any:
    """Linear warm-up to ``learning_rate`` over ``warmup_epochs``, then cosine decay to 0."""
    import keras

    warmup = int(min(total_steps // 2, round(cfg.train.warmup_epochs * steps_per_epoch)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=cfg.train.learning_rate,
        warmup_steps=warmup,
    )


def run(
    cfg: Config,
    *,
    export_path: str | Path | None = None,
    probe: tuple[Any, Any] | None = None,
    command: str | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train (or resume) a run described by ``cfg``; returns a summary with the encoder path.

    Parameters
    ----------
    cfg : Config
        The validated configuration.
    export_path : path-like, optional
        Where to export the encoder (default ``out_dir/encoder.keras``).
    probe : (images, labels), optional
        A labelled set for the kNN probe at every checkpoint.
    command : str, optional
        The command line, recorded in the model card.
    verbose : int
        Keras ``fit`` verbosity.
    """
    import keras
    import tensorflow as tf

    from model.augment import Augmenter
    from model.callbacks import Checkpointer, KNNProbe, MetricsLogger
    from model.data import load_dataset, make_training_dataset
    from model.distribute import describe, get_strategy, mixed_precision_policy
    from model.encoder import build_encoder
    from model.export import export_encoder
    from model.vicreg import VICReg, build_projector

    out = prepare_run_dir(cfg)
    run_file = out / RUN_FILE
    state: dict[str, Any] = {"state": "starting", "pid": os.getpid(), "started": time.time(),
                             "out_dir": str(out)}
    _write_json(run_file, state)
    try:
        keras.utils.set_random_seed(cfg.train.seed)
        strategy = get_strategy(cfg.train.strategy, tpu=cfg.train.tpu, zone=cfg.train.tpu_zone,
                                project=cfg.train.tpu_project)
        policy = mixed_precision_policy(strategy, cfg.train.mixed_precision)
        keras.mixed_precision.set_global_policy(policy)
        ds, info = load_dataset(cfg.data.source, fmt=cfg.data.format, image_key=cfg.data.image_key,
                                bands=cfg.encoder.bands)
        global_batch = cfg.train.batch_size
        if info.count < global_batch:
            raise TrainingError(
                f"{cfg.data.source}: {info.count} images, fewer than one batch of {global_batch}"
            )
        steps_per_epoch = cfg.train.steps_per_epoch or info.count // global_batch
        chunk = min(cfg.train.checkpoint_every, cfg.train.epochs * steps_per_epoch)
        n_chunks = math.ceil(cfg.train.epochs * steps_per_epoch / chunk)
        total_steps = n_chunks * chunk
        augmenter = Augmenter(cfg.augment, cfg.encoder.input_size, cfg.encoder.bands,
                              seed=cfg.train.seed)
        train_ds = make_training_dataset(
            ds, global_batch, cfg.data.shuffle_buffer, cfg.train.seed, cache=cfg.data.cache,
            augmenter=augmenter,
        )
        with strategy.scope():
            encoder = build_encoder(cfg.encoder)
            projector = build_projector(cfg.encoder.embedding_dim, cfg.vicreg.projector)
            model = VICReg(encoder, projector, None, sim_coeff=cfg.vicreg.sim_coeff,
                           std_coeff=cfg.vicreg.std_coeff, cov_coeff=cfg.vicreg.cov_coeff,
                           eps=cfg.vicreg.eps)
            optimizer = keras.optimizers.AdamW(
                learning_rate=lr_schedule(cfg, total_steps, steps_per_epoch),
                weight_decay=cfg.train.weight_decay,
            )
            model.compile(optimizer=optimizer)
            size = cfg.encoder.input_size
            dummy = tf.zeros((2, size, size, cfg.encoder.bands))
            model(dummy)
            optimizer.build(model.trainable_variables)
        ckpt_path, ckpt_step = latest_checkpoint(out)
        if ckpt_path is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model.load_weights(ckpt_path)
                except (ValueError, KeyError) as exc:
                    raise TrainingError(
                        f"{ckpt_path}: checkpoint does not fit this model ({exc}); it was "
                        "written by another architecture"
                    ) from exc
            # Keras only warns when parts of a checkpoint match nothing: a partial restore
            # would silently train from fresh weights, so it is refused too.
            partial = [str(w.message) for w in caught if "Skipping" in str(w.message)
                       or "mismatch" in str(w.message).lower()]
            if partial:
                raise TrainingError(
                    f"{ckpt_path}: checkpoint does not fit this model (it was written by another "
                    f"architecture): {partial[0][:200]}"
                )
        start_step = int(optimizer.iterations.numpy())
        if ckpt_path is not None and start_step != ckpt_step:
            raise TrainingError(f"{ckpt_path}: restored step {start_step} != recorded {ckpt_step}")
        initial_chunk = start_step // chunk
        logger = MetricsLogger(out / "metrics.jsonl", global_batch, steps_per_epoch,
                               cfg.train.log_every)
        callbacks: list[Any] = [logger, Checkpointer(out / "checkpoints"),
                                keras.callbacks.TensorBoard(str(out / "tensorboard"),
                                                            update_freq=cfg.train.log_every)]
        if probe is not None:
            callbacks.append(KNNProbe(probe[0], probe[1], logger))
        state.update({
            "state": "running", "step": start_step, "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch, "resumed_from": start_step or None,
            "strategy": describe(strategy), "precision": policy, "data_count": info.count,
        })
        _write_json(run_file, state)
        history = None
        if initial_chunk < n_chunks:
            history = model.fit(train_ds, epochs=n_chunks, steps_per_epoch=chunk,
                                initial_epoch=initial_chunk, callbacks=callbacks, verbose=verbose,
                                shuffle=False)
        final = {k: float(v[-1]) for k, v in (history.history.items() if history else [])}
        export = Path(export_path) if export_path else out / "encoder.keras"
        export_encoder(
            encoder, export, normspec=info.normspec, scaling=info.scaling, config=cfg.to_dict(),
            data={"source": cfg.data.source, "format": info.format, "count": info.count,
                  "bands": info.bands},
            metrics={**final, "steps": int(optimizer.iterations.numpy()),
                     "epochs": int(optimizer.iterations.numpy()) / steps_per_epoch},
            command=command,
        )
        state.update({"state": "finished", "finished": time.time(),
                      "step": int(optimizer.iterations.numpy()), "encoder": str(export),
                      "metrics": final})
        _write_json(run_file, state)
        return state
    except BaseException as exc:
        state.update({"state": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "finished": time.time()})
        _write_json(run_file, state)
        raise


def _load_probe(folder: str, size: int, cfg: Config) -> tuple[Any, Any]:
    """A balanced random subset of a labelled GZ2-style folder, resized to the input size."""
    import numpy as np
    import tensorflow as tf

    from model.evaluate import load_labelled_images

    root = Path(folder)
    images, labels, _ = load_labelled_images(root / "images", root / "labels.csv")
    rng = np.random.default_rng(cfg.train.seed)
    keep = rng.permutation(len(labels))[:size]
    side = cfg.encoder.input_size
    x = np.asarray(tf.image.resize(images[keep], (side, side), antialias=True))
    return x, labels[keep]


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m model.train``."""
    p = argparse.ArgumentParser(prog="python -m model.train",
                                description="Train a VICReg encoder (resumes an existing run).")
    p.add_argument("--config", help="JSON configuration file (see model/config.py)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="data source (folder, shards or gs:// URI): data.source")
    p.add_argument("--out", help="run folder: train.out_dir")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker", "tpu"])
    p.add_argument("--tpu", help="TPU name, or 'local' on a TPU VM")
    p.add_argument("--export", help="where to export the encoder (default OUT/encoder.keras)")
    p.add_argument("--probe", metavar="DIR",
                   help="labelled set for a kNN probe at every checkpoint: DIR/images/*.jpg and "
                        "DIR/labels.csv (galaxy_id,label; the GZ2 layout)")
    p.add_argument("--probe-size", type=int, default=600, help="labelled images used (default 600)")
    p.add_argument("--verbose", type=int, default=0, help="Keras fit verbosity (0, 1, 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_arg_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "model.train", *(sys.argv[1:] if argv is None else argv)])
    try:
        cfg = Config.load(args.config) if args.config else Config()
        sets = list(args.set)
        if args.data:
            sets.append(f"data.source={json.dumps(args.data)}")
        if args.out:
            sets.append(f"train.out_dir={json.dumps(args.out)}")
        if args.strategy:
            sets.append(f"train.strategy={json.dumps(args.strategy)}")
        if args.tpu:
            sets.append(f"train.tpu={json.dumps(args.tpu)}")
        cfg = cfg.override(sets) if sets else cfg.validate()
        if not cfg.data.source:
            raise ConfigError("no data: give --data or data.source in the configuration")
        probe = _load_probe(args.probe, args.probe_size, cfg) if args.probe else None
        summary = run(cfg, export_path=args.export, command=command, verbose=args.verbose,
                      probe=probe)
    except (ConfigError, TrainingError, FileNotFoundError) as exc:
        print(f"model.train: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from model.data import DataError
        from model.distribute import HardwareError

        if isinstance(exc, (DataError, HardwareError)):
            print(f"model.train: error: {exc}", file=sys.stderr)
            return 2
        raise
    print(f"finished at step {summary['step']}; encoder: {summary['encoder']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
