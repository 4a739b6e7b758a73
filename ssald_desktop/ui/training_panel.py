"""The training panel: start, watch, stop, resume and reuse VICReg training runs.

The astronomer chooses the data (a folder of images, the miner's shards or a ``gs://`` URI),
the configuration (epochs, batch size, learning rate, augmentation strength, encoder preset
and image size, or a whole configuration JSON) and where the run goes: this machine, an SSH
host or a Cloud TPU VM (:mod:`ssald_desktop.core.launch`). The panel plots the three VICReg
terms (invariance, variance, covariance; Bardes, Ponce & LeCun 2022), the total loss, RankMe
(the effective rank of the representations, Garrido et al. 2023, a label-free measure of
their quality) and the training speed, follows the log, and lists every run of the
:class:`~ssald_desktop.core.launch.RunRegistry`, so a run started yesterday, or one that went
on while the app was closed, is one click away.

Every launcher call blocks for one local read or one ssh round trip, so all of them run in
:class:`~ssald_desktop.ui.workers.TaskRunner` tasks; the GUI thread only draws. A run is a
separate, detached process: closing the panel (or the app) never stops it.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCloseEvent, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ssald_desktop.core.errors import SsaldError
from ssald_desktop.ui.workers import Task, TaskRunner

#: Milliseconds between two polls of a run on this machine and of a remote run.
LOCAL_POLL_MS = 2000
REMOTE_POLL_MS = 5000
#: Milliseconds between two refreshes of the list of runs.
LIST_REFRESH_MS = 10_000
#: Lines kept in the log view.
LOG_LINES = 2000
ENCODER_PRESETS = ("small", "resnet18", "resnet50")
#: The encoder combo's entry that keeps the architecture of a loaded configuration file.
FROM_FILE = "as in the loaded file"
IMAGE_SIZES = (32, 48, 64, 96, 128, 160, 224)
ACCELERATORS = ("v2-8", "v3-8", "v4-8", "v5litepod-8", "v5p-8")
TARGET_KINDS = ("Local", "SSH host", "TPU VM")
#: Curves: (key in a metrics line, legend name, colour), per plot.
PLOTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "terms": ("VICReg", [("invariance", "invariance", "#1f77b4"),
                               ("variance", "variance", "#d62728"),
                               ("covariance", "covariance", "#2ca02c")]),
    "loss": ("total loss", [("loss", "loss", "#222222")]),
    "rankme": ("RankMe (effective rank)", [("rankme", "RankMe", "#9467bd")]),
    "speed": ("images / s", [("images_per_s", "images/s", "#ff7f0e")]),
}
STATE_COLOURS = {"running": "#1a7f37", "starting": "#1a7f37", "finished": "#0b5cad",
                 "failed": "#b42318", "stopped": "#8a6d00", "unknown": "#b35c00"}
COLUMNS = ("Run", "Target", "State", "Started", "Configuration", "Outcome")

_run_locks: dict[str, threading.Lock] = {}
_run_locks_guard = threading.Lock()


def _run_lock(run_id: str) -> threading.Lock:
    """One lock per run id: polls, stops, resumes and fetches of a run never overlap."""
    with _run_locks_guard:
        return _run_locks.setdefault(run_id, threading.Lock())


# -- pure helpers (no widgets; tested directly) ---------------------------------------------
def config_summary(config: dict[str, Any]) -> str:
    """A one-line summary of a training configuration (encoder, size, schedule)."""
    enc = config.get("encoder", {})
    tr = config.get("train", {})
    aug = config.get("augment", {})
    arch = enc.get("preset", "?")
    preset_widths = {"small": 24, "resnet18": 64, "resnet50": 64}
    if enc.get("width") not in (None, preset_widths.get(arch)):
        arch = f"{arch}/w{enc.get('width')}"
    lr = tr.get("learning_rate")
    lr_text = f"{lr:g}" if isinstance(lr, (int, float)) else "?"
    return (f"{arch} {enc.get('input_size', '?')} px, {tr.get('epochs', '?')} ep x "
            f"bs {tr.get('batch_size', '?')}, lr {lr_text}, aug {aug.get('strength', 1.0):g}")


def _fmt(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.3g}"


def run_outcome(last: dict[str, Any], fetched: dict[str, str] | None = None) -> str:
    """What a run came to, in a few words, from its last known status."""
    state = last.get("state", "")
    metrics = last.get("metrics") or {}
    step, total = last.get("step"), last.get("total_steps")
    where = f"step {step}/{total}" if total else (f"step {step}" if step is not None else "")
    if state == "finished":
        encoder = (fetched or {}).get("encoder") or last.get("encoder") or ""
        text = f"loss {_fmt(metrics.get('loss'))}, RankMe {_fmt(metrics.get('rankme'))}"
        return f"{text}; encoder {Path(encoder).name}" if encoder else text
    if state == "failed":
        message = (last.get("message") or "failed").splitlines()[0]
        return f"{where}: {message}" if where else message
    if state == "stopped":
        return f"stopped at {where}" if where else "stopped"
    if state in ("running", "starting"):
        return f"{where}, loss {_fmt(metrics.get('loss'))}" if where else state
    if state == "unknown":
        return (last.get("message") or "host unreachable").splitlines()[0]
    return ""


def collect_runs(skip_poll: str | None = None) -> list[dict[str, Any]]:
    """The rows of the run list: every registered run with its last known status.

    Local runs last seen going are polled (one local read each, so a run that ended while
    the app was closed shows its end); remote ones keep their last known state until they are
    selected (a poll costs an ssh round trip). ``skip_poll`` is the run the panel already
    follows. Runs in a worker thread.
    """
    from ssald_desktop.core.launch import ACTIVE_STATES, RunRegistry

    registry = RunRegistry()
    rows = []
    for record in registry.records():
        last = dict(record.last or {})
        if (record.settings.get("kind") == "local" and record.id != skip_poll
                and last.get("state", "") in (*ACTIVE_STATES, "")):
            lock = _run_lock(record.id)
            if lock.acquire(blocking=False):
                try:
                    registry.open(record.id).poll()
                    record = registry.load(record.id)
                    last = dict(record.last or {})
                except SsaldError:
                    pass
                finally:
                    lock.release()
        rows.append({
            "id": record.id, "target": record.target, "state": last.get("state") or "?",
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created)),
            "config": config_summary(_effective_config(record.config, record.overrides)),
            "outcome": run_outcome(last, record.fetched),
            "seen": last.get("time"), "data": record.data, "name": record.name,
        })
    return rows


def _effective_config(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A run's configuration with its ``section.key=value`` overrides (e.g. from a resume)."""
    if not overrides:
        return config
    from model.config import Config, ConfigError

    try:
        return Config.from_dict(config).override(list(overrides)).to_dict()
    except (ConfigError, TypeError):
        return config


def _open_and_poll(run_id: str) -> tuple[Any, str, Any, Any]:
    """Reattach to a run and take its first poll (the whole history so far).

    Returns the run, the state it was last seen in (before this poll), the poll and, when
    the host cannot be reached, the history received earlier (this machine's copy of the
    metrics and log) as ``(metrics, log)``, else None.
    """
    from ssald_desktop.core.launch import open_run

    run = open_run(run_id)
    prior = str((run.record.last or {}).get("state", ""))
    with _run_lock(run_id):
        update = run.poll()
        history = None
        if update.status.state == "unknown":
            history = (run.metrics(), run.log_tail(LOG_LINES))
    return run, prior, update, history


def _poll(run: Any) -> Any:
    with _run_lock(run.id):
        return run.poll()


def _start(target: str, config: dict[str, Any], data: str, name: str | None,
           options: dict[str, Any]) -> Any:
    from ssald_desktop.core.launch import launch

    return launch(target, config, data, name=name, **options)


def _stop(run_id: str) -> Any:
    from ssald_desktop.core.launch import open_run

    run = open_run(run_id)  # a handle of its own: the panel's keeps its place in the stream
    with _run_lock(run_id):
        return run.stop()


def _resume(run_id: str, overrides: list[str]) -> str:
    from ssald_desktop.core.launch import open_run

    run = open_run(run_id)
    with _run_lock(run_id):
        run.resume(overrides)
    return run_id


def _fetch_encoder(run_id: str) -> str:
    """The local path of a finished run's exported encoder (fetched from a remote host)."""
    from ssald_desktop.core.launch import LaunchError, open_run

    run = open_run(run_id)
    with _run_lock(run_id):
        try:
            found = run.fetch()
        except LaunchError:
            found = run.record.fetched  # host unreachable: a copy fetched before will do
            if not found.get("encoder") or not Path(found["encoder"]).is_file():
                raise
    encoder = found.get("encoder")
    if not encoder or not Path(encoder).is_file():
        raise LaunchError(f"run {run_id}: no exported encoder.keras in {run.folder}")
    return encoder


def gcloud_problem() -> str:
    """Why the TPU VM target cannot be used here ('' when gcloud is on PATH)."""
    from ssald_desktop.core.launch import LaunchError, require_gcloud

    try:
        require_gcloud()
    except LaunchError as exc:
        return str(exc)
    return ""


_GLOG_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d\d")
_NOISE = ("WARNING: All log messages before absl::InitializeLog()",)


def quiet_log(text: str, lines: int = 8) -> str:
    """The last ``lines`` lines of a log without TensorFlow's start-up chatter.

    Info and warning lines of TensorFlow's C++ logging (``I0000 00:00:...``, ``W0000 ...``)
    and absl's start-up notice are left out; errors (``E...``, Python tracebacks) are kept.
    """
    keep = [line for line in text.splitlines() if line.strip()
            and not _GLOG_LINE.match(line) and not line.startswith(_NOISE)]
    return "\n".join(keep[-lines:])


class _Series:
    """The points of one curve (steps and values, NaN where a line lacks the key)."""

    def __init__(self) -> None:
        self.x: list[float] = []
        self.y: list[float] = []

    def truncate(self, x_max: float) -> bool:
        """Drop the points after ``x_max``; whether any were dropped."""
        keep = sum(1 for x in self.x if x <= x_max)
        dropped = keep < len(self.x)
        del self.x[keep:], self.y[keep:]
        return dropped

    def add(self, x: float, value: Any) -> None:
        self.x.append(x)
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        self.y.append(float(value) if ok else math.nan)


class TrainingPanel(QWidget):
    """Start and follow training runs on this machine, an SSH host or a Cloud TPU VM.

    Parameters
    ----------
    tasks : TaskRunner
        Where launcher calls run (never in the GUI thread).
    default_data : str, optional
        The data source shown at first (a folder of images, shards or ``gs://``).
    parent : QWidget, optional

    Signals
    -------
    encoderChosen(str)
        The local path of a finished run's exported ``encoder.keras`` ("Use this encoder").
    runStarted(str)
        A run id, when a run started from this panel is going.
    runFinished(str, str)
        A run id and its final state (finished, failed, stopped), when the followed run ends.
    """

    encoderChosen = Signal(str)
    runStarted = Signal(str)
    runFinished = Signal(str, str)

    def __init__(self, tasks: TaskRunner, *, default_data: str | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.setObjectName("TrainingPanel")
        self._closed = False
        self._base_config: dict[str, Any] = {}
        self._config_file: str = ""
        self._run: Any = None  # the followed Run handle
        self._run_id: str = ""
        self._run_remote = False
        self._generation = 0
        self._state = ""
        self._poll_task: Task | None = None
        self._list_task: Task | None = None
        self._busy: str = ""  # a control action in progress (start, stop, resume, fetch)
        self._series: dict[str, _Series] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._rows: list[dict[str, Any]] = []
        self._ended_reported: set[str] = set()
        self._last_seen = ""  # the followed run's state before the panel followed it
        self._provisional = False  # history shown from this machine's copy (host unreachable)

        self._build(default_data or "")
        self.poll_timer = QTimer(self)
        self.poll_timer.timeout.connect(self.poll_now)
        self.list_timer = QTimer(self)
        self.list_timer.setInterval(LIST_REFRESH_MS)
        self.list_timer.timeout.connect(self.refresh_runs)
        self.list_timer.start()
        self._target_changed()
        self._update_buttons()
        self.refresh_runs()

    # -- construction ------------------------------------------------------------------------
    def _build(self, default_data: str) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        outer.addWidget(split)

        setup = QWidget()
        col = QVBoxLayout(setup)
        col.setContentsMargins(0, 0, 4, 0)
        col.addWidget(self._data_group(default_data))
        col.addWidget(self._config_group())
        col.addWidget(self._target_group())
        self.start_button = QPushButton("Start training")
        self.start_button.setToolTip("Start a new run with this data, configuration and target")
        self.start_button.clicked.connect(self.start)
        col.addWidget(self.start_button)
        col.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(setup)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(300)
        split.addWidget(scroll)

        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        right.addWidget(self._monitor())
        right.addWidget(self._log_view())
        right.addWidget(self._runs_view())
        right.setStretchFactor(0, 5)
        right.setStretchFactor(1, 2)
        right.setStretchFactor(2, 2)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([320, 900])

    def _data_group(self, default_data: str) -> QGroupBox:
        box = QGroupBox("Data")
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.data_edit = QLineEdit(default_data)
        self.data_edit.setPlaceholderText("folder of images, shards, or gs://bucket/path")
        self.data_edit.setToolTip(
            "A folder of PNG/JPEG cutouts, the miner's HDF5/TFRecord shards (folder, file or "
            "glob), or a gs:// URI. For a remote target, the path as that host sees it.")
        self.data_edit.textChanged.connect(self._update_buttons)
        browse = QToolButton()
        browse.setText("Browse…")
        browse.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(browse)
        menu.addAction("Folder…", self._browse_folder)
        menu.addAction("Shard file…", self._browse_shards)
        browse.setMenu(menu)
        row.addWidget(self.data_edit, 1)
        row.addWidget(browse)
        form.addRow("Source", row)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("optional, e.g. gz2 small 64px")
        form.addRow("Run name", self.name_edit)
        return box

    def _config_group(self) -> QGroupBox:
        box = QGroupBox("Configuration")
        form = QFormLayout(box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100_000)
        self.epochs_spin.setValue(35)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(2, 65_536)
        self.batch_spin.setValue(128)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 10.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(2e-3)
        self.lr_spin.setToolTip("Peak learning rate (LARS/AdamW after warm-up)")
        self.aug_spin = QDoubleSpinBox()
        self.aug_spin.setRange(0.0, 3.0)
        self.aug_spin.setSingleStep(0.1)
        self.aug_spin.setValue(1.0)
        self.aug_spin.setToolTip("Scales every augmentation range: 0 = identity, 1 = default")
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(ENCODER_PRESETS)
        self.preset_combo.setToolTip(
            "small: ~1.6M parameters (CPU); resnet18: ~11M; resnet50: for GPU/TPU")
        self.size_combo = QComboBox()
        self.size_combo.addItems([str(s) for s in IMAGE_SIZES])
        self.size_combo.setCurrentText("64")
        load = QPushButton("Load config JSON…")
        load.clicked.connect(self._browse_config)
        self.config_label = QLabel("defaults")
        self.config_label.setWordWrap(True)
        self.config_label.setStyleSheet("color: #555;")
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Augmentation", self.aug_spin)
        form.addRow("Encoder", self.preset_combo)
        form.addRow("Image size (px)", self.size_combo)
        form.addRow(load, self.config_label)
        return box

    def _target_group(self) -> QGroupBox:
        box = QGroupBox("Target")
        col = QVBoxLayout(box)
        self.target_combo = QComboBox()
        self.target_combo.addItems(TARGET_KINDS)
        self.target_combo.currentIndexChanged.connect(self._target_changed)
        col.addWidget(self.target_combo)
        self.target_stack = QStackedWidget()
        col.addWidget(self.target_stack)

        local = QWidget()
        lf = QFormLayout(local)
        lf.setContentsMargins(0, 0, 0, 0)
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(["default", "mirrored"])
        self.strategy_combo.setToolTip("mirrored: data-parallel over this machine's GPUs")
        lf.addRow("Strategy", self.strategy_combo)
        self.target_stack.addWidget(local)

        ssh = QWidget()
        sf = QFormLayout(ssh)
        sf.setContentsMargins(0, 0, 0, 0)
        self.ssh_host_edit = QLineEdit()
        self.ssh_host_edit.setPlaceholderText("user@host:port")
        self.ssh_host_edit.textChanged.connect(self._update_buttons)
        key_row = QHBoxLayout()
        self.ssh_key_edit = QLineEdit()
        self.ssh_key_edit.setPlaceholderText("~/.ssh/id_ed25519 (optional)")
        key_browse = QPushButton("…")
        key_browse.setFixedWidth(28)
        key_browse.clicked.connect(self._browse_key)
        key_row.addWidget(self.ssh_key_edit, 1)
        key_row.addWidget(key_browse)
        self.ssh_python_edit = QLineEdit()
        self.ssh_python_edit.setPlaceholderText("python3")
        self.ssh_workdir_edit = QLineEdit()
        self.ssh_workdir_edit.setPlaceholderText("~/ssald-runs")
        self.ssh_strategy_combo = QComboBox()
        self.ssh_strategy_combo.addItems(["default", "mirrored"])
        sf.addRow("Host", self.ssh_host_edit)
        sf.addRow("Identity file", key_row)
        sf.addRow("Remote Python", self.ssh_python_edit)
        sf.addRow("Work folder", self.ssh_workdir_edit)
        sf.addRow("Strategy", self.ssh_strategy_combo)
        self.target_stack.addWidget(ssh)

        tpu = QWidget()
        tf = QFormLayout(tpu)
        tf.setContentsMargins(0, 0, 0, 0)
        self.tpu_project_edit = QLineEdit()
        self.tpu_project_edit.setPlaceholderText("my-gcp-project")
        self.tpu_zone_edit = QLineEdit()
        self.tpu_zone_edit.setPlaceholderText("europe-west4-a")
        self.tpu_name_edit = QLineEdit()
        self.tpu_name_edit.setPlaceholderText("ssald-tpu")
        self.tpu_accel_combo = QComboBox()
        self.tpu_accel_combo.setEditable(True)
        self.tpu_accel_combo.addItems(ACCELERATORS)
        self.tpu_accel_combo.setCurrentText("v3-8")
        self.tpu_gcs_edit = QLineEdit()
        self.tpu_gcs_edit.setPlaceholderText("gs://bucket/ssald-runs")
        for edit in (self.tpu_project_edit, self.tpu_zone_edit, self.tpu_name_edit):
            edit.textChanged.connect(self._update_buttons)
        tf.addRow("Project", self.tpu_project_edit)
        tf.addRow("Zone", self.tpu_zone_edit)
        tf.addRow("TPU name", self.tpu_name_edit)
        tf.addRow("Accelerator", self.tpu_accel_combo)
        tf.addRow("gs:// folder", self.tpu_gcs_edit)
        self.target_stack.addWidget(tpu)
        self._target_pages = [local, ssh, tpu]

        self.target_note = QLabel()
        self.target_note.setWordWrap(True)
        self.target_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.target_note.setOpenExternalLinks(True)
        self.target_note.setStyleSheet(
            "QLabel { background: #fff4e5; border: 1px solid #f0b35b; padding: 4px; }")
        self.target_note.hide()
        col.addWidget(self.target_note)
        return box

    def _monitor(self) -> QWidget:
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(3)
        top = QHBoxLayout()
        self.state_label = QLabel("No run selected: start one, or pick one in the list below.")
        self.state_label.setTextFormat(Qt.TextFormat.RichText)
        self.state_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setMinimumWidth(190)
        self.progress_bar.setMaximumWidth(260)
        self.progress_bar.setFormat("")
        top.addWidget(self.state_label, 1)
        top.addWidget(self.progress_bar)
        self.progress_bar.hide()
        col.addLayout(top)

        buttons = QHBoxLayout()
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the run (it keeps its checkpoints and can resume)")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue from the last checkpoint")
        self.resume_button.clicked.connect(self.resume)
        self.resume_epochs = QSpinBox()
        self.resume_epochs.setRange(1, 100_000)
        self.resume_epochs.setPrefix("until epoch ")
        self.resume_epochs.setToolTip(
            "Resume trains until this epoch (the learning-rate schedule follows the new total)")
        self.use_button = QPushButton("Use this encoder")
        self.use_button.setToolTip(
            "Switch the app to this run's exported encoder (fetched first from a remote host)")
        self.use_button.clicked.connect(self.use_encoder)
        for w in (self.stop_button, self.resume_button, self.resume_epochs):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        col.addLayout(buttons)

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet(
            "QLabel { background: #fdecea; color: #611a15; border: 1px solid #e6a5a0; "
            "padding: 4px; font-family: monospace; }")
        self.error_box = self.error_label  # (short: a reason and at most 8 log lines)
        self.error_box.hide()
        col.addWidget(self.error_box)

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("w")
        self.plots.setMinimumHeight(260)
        self.plot_items: dict[str, pg.PlotItem] = {}
        for i, (key, (title, curves)) in enumerate(PLOTS.items()):
            plot = self.plots.addPlot(row=i // 2, col=i % 2)
            if len(curves) > 1:  # the names in their colours: a legend would hide curves
                names = " ".join(f"<span style='color:{c}'>{n}</span>" for _, n, c in curves)
                title = f"{title} {names}"
            plot.setTitle(title, size="9pt", color="#222")
            plot.setMenuEnabled(False)
            plot.hideButtons()
            plot.showGrid(x=True, y=True, alpha=0.15)
            plot.setLabel("bottom", "step", size="8pt")
            plot.getAxis("left").setWidth(46)  # room for the tick labels at any size
            for side in ("left", "bottom"):
                axis = plot.getAxis(side)
                axis.setPen(pg.mkPen(90, 90, 90))
                axis.setTextPen(pg.mkPen(30, 30, 30))
            for metric, name, colour in curves:
                curve = plot.plot([], [], name=name, connect="finite",
                                  pen=pg.mkPen(colour, width=1.6),
                                  symbol="o", symbolSize=3, symbolPen=None,
                                  symbolBrush=pg.mkBrush(colour))
                self._curves[metric] = curve
            self.plot_items[key] = plot
        layout = self.plots.ci.layout
        for i in range(2):
            layout.setColumnStretchFactor(i, 1)
            layout.setRowStretchFactor(i, 1)
        self.plots.setToolTip(
            "VICReg terms unweighted (the total is 25 x invariance + 25 x variance + "
            "1 x covariance with the default coefficients); RankMe: effective rank of the "
            "representations (higher = less collapse); x: training step")
        col.addWidget(self.plots, 1)
        return box

    def _log_view(self) -> QWidget:
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setPlaceholderText("The run's log appears here.")
        font = self.log_view.font()
        font.setFamily("monospace")
        font.setStyleHint(font.StyleHint.Monospace)
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        self.log_view.setFont(font)
        self.log_view.setMinimumHeight(90)
        return self.log_view

    def _runs_view(self) -> QWidget:
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(2)
        head = QHBoxLayout()
        head.addWidget(QLabel("<b>Runs</b> (select one to follow it)"))
        head.addStretch(1)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_runs)
        head.addWidget(refresh)
        col.addLayout(head)
        self.runs_tree = QTreeWidget()
        self.runs_tree.setColumnCount(len(COLUMNS))
        self.runs_tree.setHeaderLabels(list(COLUMNS))
        self.runs_tree.setRootIsDecorated(False)
        self.runs_tree.setAlternatingRowColors(True)
        self.runs_tree.setUniformRowHeights(True)
        self.runs_tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.runs_tree.header()
        header.setStretchLastSection(True)
        for i in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        for i, width in ((0, 200), (4, 300)):  # long ids and summaries: elided, in tooltips
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(i, width)
        self.runs_tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.runs_tree.itemSelectionChanged.connect(self._run_selected)
        self.runs_tree.setMinimumHeight(80)
        col.addWidget(self.runs_tree, 1)
        return box

    # -- form --------------------------------------------------------------------------------
    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training images or shards folder",
                                                self.data_edit.text())
        if path:
            self.data_edit.setText(path)

    def _browse_shards(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "A shard file", self.data_edit.text(),
            "Shards (*.h5 *.hdf5 *.tfrecord *.tfrec);;All files (*)")
        if path:
            self.data_edit.setText(path)

    def _browse_key(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SSH private key",
                                              str(Path("~/.ssh").expanduser()))
        if path:
            self.ssh_key_edit.setText(path)

    def _browse_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Training configuration", "",
                                              "JSON (*.json);;All files (*)")
        if path:
            self.load_config_file(path)

    def load_config_file(self, path: str | Path) -> bool:
        """Read a configuration JSON into the form (its other settings are kept as given).

        Returns whether it was read; a bad file is reported in the panel.
        """
        from ssald_desktop.core.launch import LaunchError, load_config

        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            full = load_config(raw if isinstance(raw, dict) else path)
        except (OSError, json.JSONDecodeError) as exc:
            self.show_error(f"{path}: cannot read a configuration ({exc})")
            return False
        except LaunchError as exc:
            self.show_error(f"{path}: {exc}")
            return False
        self._base_config = raw
        self._config_file = str(path)
        tr, enc = full["train"], full["encoder"]
        self.epochs_spin.setValue(int(tr["epochs"]))
        self.batch_spin.setValue(int(tr["batch_size"]))
        self.lr_spin.setValue(float(tr["learning_rate"]))
        self.aug_spin.setValue(float(full["augment"]["strength"]))
        size = str(enc["input_size"])
        if self.size_combo.findText(size) < 0:
            self.size_combo.addItem(size)
        self.size_combo.setCurrentText(size)
        custom = any(k in raw.get("encoder", {}) for k in
                     ("width", "depths", "bottleneck", "embedding_dim"))
        index = self.preset_combo.findText(FROM_FILE)
        if custom and index < 0:
            self.preset_combo.addItem(FROM_FILE)
        elif not custom and index >= 0:
            self.preset_combo.removeItem(index)
        self.preset_combo.setCurrentText(FROM_FILE if custom else enc["preset"])
        self.config_label.setText(f"{path.name}: {config_summary(full)}")
        self.config_label.setToolTip(str(path))
        self.clear_error()
        return True

    def config_dict(self) -> dict[str, Any]:
        """The configuration of the next run: the loaded file (if any) with the form's values."""
        cfg = json.loads(json.dumps(self._base_config))  # a deep copy
        for section in ("encoder", "augment", "train"):
            cfg.setdefault(section, {})
        cfg["train"].update(epochs=self.epochs_spin.value(), batch_size=self.batch_spin.value(),
                            learning_rate=self.lr_spin.value())
        cfg["augment"]["strength"] = self.aug_spin.value()
        preset = self.preset_combo.currentText()
        if preset != FROM_FILE:
            keep = {k: v for k, v in cfg["encoder"].items() if k == "bands"}
            cfg["encoder"] = {**keep, "preset": preset}
        cfg["encoder"]["input_size"] = int(self.size_combo.currentText())
        return cfg

    def target_kind(self) -> str:
        """``local``, ``ssh`` or ``tpu-vm``, from the target chooser."""
        return ("local", "ssh", "tpu-vm")[self.target_combo.currentIndex()]

    def target_and_options(self) -> tuple[str, dict[str, Any]]:
        """The target string and launcher options of :func:`~ssald_desktop.core.launch.launch`.

        Raises
        ------
        SsaldError
            A target field is missing.
        """
        from ssald_desktop.core.launch import LaunchError

        kind = self.target_kind()
        if kind == "local":
            return "local", {"strategy": self.strategy_combo.currentText()}
        if kind == "ssh":
            host = self.ssh_host_edit.text().strip()
            if not host:
                raise LaunchError("SSH target: give the host as user@host:port")
            target = host if host.startswith("ssh://") else f"ssh://{host}"
            return target, {"identity": self.ssh_key_edit.text().strip() or None,
                            "python": self.ssh_python_edit.text().strip() or None,
                            "workdir": self.ssh_workdir_edit.text().strip() or None,
                            "strategy": self.ssh_strategy_combo.currentText()}
        fields = {"project": self.tpu_project_edit.text().strip(),
                  "zone": self.tpu_zone_edit.text().strip(),
                  "TPU name": self.tpu_name_edit.text().strip()}
        missing = [k for k, v in fields.items() if not v]
        if missing:
            raise LaunchError(f"TPU VM target: give the {', '.join(missing)}")
        project, zone, name = fields.values()
        return f"tpu-vm://{project}/{zone}/{name}", {
            "accelerator_type": self.tpu_accel_combo.currentText().strip() or None,
            "gcs_dir": self.tpu_gcs_edit.text().strip() or None}

    @Slot()
    def _target_changed(self) -> None:
        index = self.target_combo.currentIndex()
        self.target_stack.setCurrentIndex(index)
        for i, page in enumerate(self._target_pages):  # the stack as tall as the shown page
            policy = (QSizePolicy.Policy.Preferred if i == index
                      else QSizePolicy.Policy.Ignored)
            page.setSizePolicy(policy, policy)
        self.target_stack.adjustSize()
        note = ""
        if self.target_kind() == "tpu-vm":
            problem = gcloud_problem()
            if problem:
                url = "https://cloud.google.com/sdk/docs/install"
                note = (problem.replace(url, f'<a href="{url}">{url}</a>')
                        if url in problem else problem)
        self.target_note.setText(note)
        self.target_note.setVisible(bool(note))
        self._update_buttons()

    # -- actions -----------------------------------------------------------------------------
    @Slot()
    def start(self) -> None:
        """Start a run with the form's data, configuration and target (in a worker)."""
        from ssald_desktop.core.launch import load_config

        if self._busy:
            return
        try:
            target, options = self.target_and_options()
            config = load_config(self.config_dict())
        except SsaldError as exc:
            self.show_error(str(exc))
            return
        data = self.data_edit.text().strip()
        if not data:
            self.show_error("Give the training data: a folder of images, shards or a gs:// URI")
            return
        name = self.name_edit.text().strip() or (Path(self._config_file).stem
                                                 if self._config_file else None)
        self.clear_error()
        self._set_busy("start", f"Starting a run on {target}…")
        self.tasks.run("start training run", _start, target, config, data, name, options,
                       on_result=self._started, on_error=self._action_failed)

    def _started(self, run: Any) -> None:
        if self._gone():
            return
        self._busy = ""
        self._follow(run, None)
        self.runStarted.emit(run.id)
        self.refresh_runs()

    @Slot()
    def stop(self) -> None:
        """Stop the followed run (SIGTERM to its process group; it can resume)."""
        if not self._run_id or self._busy:
            return
        self._set_busy("stop", f"Stopping {self._run_id}…")
        self.tasks.run("stop training run", _stop, self._run_id,
                       on_result=self._after_control, on_error=self._action_failed)

    @Slot()
    def resume(self) -> None:
        """Resume the followed run from its last checkpoint, until the chosen epoch."""
        if not self._run_id or self._busy or self._run is None:
            return
        overrides = []
        epochs = self.resume_epochs.value()
        if epochs != self._run_epochs():
            overrides.append(f"train.epochs={epochs}")
        self.clear_error()
        self._set_busy("resume", f"Resuming {self._run_id}…")
        self.tasks.run("resume training run", _resume, self._run_id, overrides,
                       on_result=self._resumed, on_error=self._action_failed)

    def _resumed(self, run_id: str) -> None:
        if self._gone():
            return
        self._busy = ""
        self._ended_reported.discard(run_id)
        self._state = "starting"
        self._arm_poll()
        self.poll_now()
        self.refresh_runs()

    def _after_control(self, _status: Any) -> None:
        if self._gone():
            return
        self._busy = ""
        self.poll_now()
        self.refresh_runs()

    @Slot()
    def use_encoder(self) -> None:
        """Emit :attr:`encoderChosen` with the followed finished run's encoder (fetched)."""
        if not self._run_id or self._busy:
            return
        self._set_busy("fetch", f"Fetching the encoder of {self._run_id}…")
        self.tasks.run("fetch encoder", _fetch_encoder, self._run_id,
                       on_result=self._encoder_ready, on_error=self._action_failed)

    def _encoder_ready(self, path: str) -> None:
        if self._gone():
            return
        self._busy = ""
        self._update_buttons()
        self._set_state_text(self._state, f"encoder: {path}")
        self.encoderChosen.emit(path)

    def _action_failed(self, exc: BaseException) -> None:
        if self._gone():
            return
        what = {"start": "Could not start the run", "stop": "Could not stop the run",
                "resume": "Could not resume the run",
                "fetch": "Could not fetch the encoder"}.get(self._busy, "Failed")
        self._busy = ""
        self.show_error(f"{what}: {exc}" if isinstance(exc, SsaldError) else
                        f"{what}: {type(exc).__name__}: {exc}")
        if self._run is not None:
            self._set_state_text(self._state)
        elif not self._run_id:
            self.state_label.setText("No run followed: start one, or pick one in the list.")
        self._update_buttons()

    def _set_busy(self, what: str, text: str) -> None:
        self._busy = what
        self.state_label.setText(text)
        self._update_buttons()

    # -- following a run ---------------------------------------------------------------------
    def attach(self, run_id: str) -> None:
        """Follow a registered run: plot its history and poll it from now on."""
        if run_id == self._run_id and self._run is not None:
            return
        self._generation += 1
        generation = self._generation
        self._reset_view()
        self._run, self._run_id, self._state = None, run_id, ""
        self.poll_timer.stop()
        self.state_label.setText(f"Reattaching to {run_id}…")
        self._update_buttons()
        self.tasks.run("reattach training run", _open_and_poll, run_id,
                       on_result=lambda res: self._attached(generation, res),
                       on_error=lambda exc: self._poll_failed(generation, exc))

    def _attached(self, generation: int, result: tuple[Any, str, Any, Any]) -> None:
        if self._gone() or generation != self._generation:
            return
        run, prior, update, history = result
        if history is not None:  # host unreachable: show what arrived before, for now
            self._add_metrics(history[0])
            self._append_log(history[1] + "\n")
            self._provisional = True
        self._follow(run, update, prior)

    def _follow(self, run: Any, first: Any, prior: str = "") -> None:
        """Make ``run`` the followed run.

        ``first`` is its first poll (None: a new run, polled now); ``prior`` the state it was
        last seen in (a run seen going that has ended since is reported by runFinished).
        """
        if run.id != self._run_id or first is None:
            self._generation += 1
            self._reset_view()
        self._run, self._run_id = run, run.id
        self._run_remote = bool(run.launcher.remote)
        self._last_seen = prior
        self.resume_epochs.setValue(self._run_epochs())
        self._select_row(run.id)
        if first is None:
            self._state = "starting"
            self._arm_poll()
            self.poll_now()
        else:
            self._state = prior if prior in ("starting", "running", "unknown") else ""
            self._apply(first)
            if not first.status.done:
                self._arm_poll()

    def _run_epochs(self) -> int:
        """The epochs the followed run is planned for (its config and overrides)."""
        if self._run is None:
            return self.epochs_spin.value()
        epochs = int(self._run.record.config.get("train", {}).get("epochs", 1))
        for item in self._run.record.overrides:
            key, _, value = item.partition("=")
            if key == "train.epochs" and value.strip().isdigit():
                epochs = int(value)
        return epochs

    def _arm_poll(self) -> None:
        self.poll_timer.setInterval(REMOTE_POLL_MS if self._run_remote else LOCAL_POLL_MS)
        if not self.poll_timer.isActive():
            self.poll_timer.start()

    @Slot()
    def poll_now(self) -> None:
        """Poll the followed run in a worker (skipped while the previous poll runs)."""
        if self._gone() or self._run is None:
            return
        if self._poll_task is not None and self._poll_task.running:
            return
        generation = self._generation
        self._poll_task = self.tasks.run(
            "poll training run", _poll, self._run,
            on_result=lambda update: self._polled(generation, update),
            on_error=lambda exc: self._poll_failed(generation, exc))

    def _polled(self, generation: int, update: Any) -> None:
        if self._gone() or generation != self._generation:
            return
        self._apply(update)

    def _poll_failed(self, generation: int, exc: BaseException) -> None:
        if self._gone() or generation != self._generation:
            return
        self.show_error(str(exc) if isinstance(exc, SsaldError) else
                        f"polling {self._run_id} failed: {type(exc).__name__}: {exc}")
        if self._run is None:
            self.state_label.setText(f"Cannot follow {self._run_id}.")
            self._run_id = ""
        self._update_buttons()

    def _apply(self, update: Any) -> None:
        """Show one poll: new metrics on the plots, new log text, state and progress."""
        status = update.status
        if self._provisional and status.state != "unknown":
            # the first poll that reached the host hands out the whole history again
            self._provisional = False
            self._series.clear()
            for curve in self._curves.values():
                curve.setData([], [])
            self.log_view.clear()
        self._add_metrics(update.metrics)
        if update.log:
            self._append_log(update.log)
        previous, self._state = self._state, status.state
        if status.state != "unknown":
            self._last_seen = status.state
        detail = ""
        if status.state == "unknown":
            seen = self._last_seen
            every = f"retrying every {REMOTE_POLL_MS // 1000} s"
            if seen in ("finished", "failed", "stopped"):
                head = f"Cannot reach the run's host (the run was last seen {seen}; {every})"
            else:
                head = f"Cannot reach the run's host; the run may well still be going ({every})"
            self.show_error(f"{head}:\n{status.message}")
        elif status.state == "failed":
            reason, _, tail = (status.message or "the run failed").partition(
                "; last log lines:\n")
            tail = quiet_log(tail or status.log_tail, 8)
            text = f"Run {status.run_id} failed: {reason}"
            self.show_error(f"{text}\nlast log lines:\n{tail}" if tail else text)
        elif self._busy not in ("start",):
            self.clear_error()
        if status.state == "finished" and status.encoder:
            detail = f"encoder: {status.encoder}"
        self._set_state_text(status.state, detail, status)
        if status.progress is not None:
            self.progress_bar.setValue(int(round(1000 * status.progress)))
            self.progress_bar.setFormat(f"step {status.step}/{status.total_steps}  %p%")
            self.progress_bar.show()
        if status.done:
            self.poll_timer.stop()
            if (previous in ("starting", "running", "unknown")
                    and status.run_id not in self._ended_reported):
                self._ended_reported.add(status.run_id)
                self.runFinished.emit(status.run_id, status.state)
                self.refresh_runs()
        elif status.state == "unknown":
            self.poll_timer.setInterval(REMOTE_POLL_MS)
        self._update_row(status)
        self._update_buttons()

    def _set_state_text(self, state: str, detail: str = "", status: Any = None) -> None:
        colour = STATE_COLOURS.get(state, "#333")
        where = ""
        if self._run is not None:
            where = f" on {self._run.record.target}"
        metrics = (status.metrics if status is not None else {}) or {}
        numbers = ""
        if metrics.get("loss") is not None:
            numbers = (f" · loss {_fmt(metrics.get('loss'))} · RankMe "
                       f"{_fmt(metrics.get('rankme'))}")
        extra = f"<br><span style='color:#555'>{detail}</span>" if detail else ""
        self.state_label.setText(
            f"<b>{self._run_id}</b>{where}: <b style='color:{colour}'>{state or '…'}</b>"
            f"{numbers}{extra}")

    def _add_metrics(self, lines: list[dict[str, Any]]) -> None:
        changed = False
        for m in lines:
            event, step = m.get("event"), m.get("step")
            if step is None:
                continue
            if event == "start":
                # A resumed run goes on from its checkpoint: the steps logged after that
                # checkpoint were lost with the stopped process and are trained again.
                for kept in self._series.values():
                    changed |= kept.truncate(float(step))
            elif event == "train":
                changed = True
                for metric in self._curves:
                    self._series.setdefault(metric, _Series()).add(float(step), m.get(metric))
        if not changed:
            return
        for metric, curve in self._curves.items():
            if metric in self._series:
                curve.setData(self._series[metric].x, self._series[metric].y)

    def _append_log(self, text: str) -> None:
        bar = self.log_view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 2
        cursor = self.log_view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        if at_end:
            bar.setValue(bar.maximum())

    def _reset_view(self) -> None:
        self._series.clear()
        self._provisional = False
        for curve in self._curves.values():
            curve.setData([], [])
        self.log_view.clear()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.progress_bar.hide()
        self.clear_error()

    def curve_data(self, metric: str) -> tuple[list[float], list[float]]:
        """The plotted steps and values of one metric (NaN where a line lacked it)."""
        series = self._series.get(metric)
        return (list(series.x), list(series.y)) if series is not None else ([], [])

    def curve_points(self, metric: str) -> int:
        """Number of plotted points of one metric's curve (finite values only)."""
        series = self._series.get(metric)
        if series is None:
            return 0
        return sum(1 for v in series.y if math.isfinite(v))

    @property
    def run_id(self) -> str:
        """The followed run ('' when none)."""
        return self._run_id

    @property
    def state(self) -> str:
        """The followed run's last known state ('' when none)."""
        return self._state

    # -- errors ------------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        """Show a problem in the panel (kept until the next success)."""
        self.error_label.setText(text)
        self.error_label.setToolTip(text)
        self.error_box.show()

    def clear_error(self) -> None:
        """Hide the problem box."""
        self.error_label.clear()
        self.error_box.hide()

    def error_text(self) -> str:
        """The problem shown ('' when none)."""
        return self.error_label.text() if self.error_box.isVisibleTo(self) else ""

    # -- buttons -----------------------------------------------------------------------------
    @Slot()
    def _update_buttons(self) -> None:
        if self._gone():
            return
        busy = bool(self._busy)
        attached = self._run is not None
        state = self._state
        tpu_blocked = self.target_kind() == "tpu-vm" and self.target_note.isVisibleTo(self)
        self.start_button.setEnabled(not busy and not tpu_blocked
                                     and bool(self.data_edit.text().strip()))
        ended = self._last_seen in ("finished", "failed", "stopped")
        self.stop_button.setEnabled(attached and not busy and (
            state in ("starting", "running") or (state == "unknown" and not ended)))
        self.resume_button.setEnabled(attached and not busy and state in ("stopped", "failed"))
        self.resume_epochs.setEnabled(self.resume_button.isEnabled())
        fetched = bool(self._run is not None and self._run.record.fetched.get("encoder"))
        self.use_button.setEnabled(attached and not busy and (state == "finished" or (
            state == "unknown" and self._last_seen == "finished" and fetched)))

    # -- run list ----------------------------------------------------------------------------
    @Slot()
    def refresh_runs(self) -> None:
        """Re-read the run registry in a worker (skipped while the previous read runs)."""
        if self._gone() or (self._list_task is not None and self._list_task.running):
            return
        self._list_task = self.tasks.run("list training runs", collect_runs,
                                         self._run_id or None, on_result=self._show_runs,
                                         on_error=self._list_failed)

    def _list_failed(self, exc: BaseException) -> None:
        if not self._gone():
            self.show_error(f"cannot list the runs: {exc}")

    def _show_runs(self, rows: list[dict[str, Any]]) -> None:
        if self._gone():
            return
        self._rows = rows
        tree = self.runs_tree
        tree.blockSignals(True)
        try:
            tree.clear()
            for row in reversed(rows):  # newest first
                if row["id"] == self._run_id and self._state:
                    row = {**row, "state": self._state}
                item = QTreeWidgetItem([row["id"], row["target"], row["state"], row["started"],
                                        row["config"], row["outcome"]])
                item.setData(0, Qt.ItemDataRole.UserRole, row["id"])
                item.setForeground(2, pg.mkColor(STATE_COLOURS.get(row["state"], "#333")))
                item.setToolTip(0, f"{row['name'] or row['id']}\ndata: {row['data']}")
                item.setToolTip(4, row["config"])
                item.setToolTip(5, row["outcome"])
                tree.addTopLevelItem(item)
                if row["id"] == self._run_id:
                    item.setSelected(True)
        finally:
            tree.blockSignals(False)

    def _items(self) -> list[QTreeWidgetItem]:
        tree = self.runs_tree
        items = (tree.topLevelItem(i) for i in range(tree.topLevelItemCount()))
        return [item for item in items if item is not None]

    def run_ids(self) -> list[str]:
        """The run ids in the list, newest first."""
        return [item.data(0, Qt.ItemDataRole.UserRole) for item in self._items()]

    def _find_item(self, run_id: str) -> QTreeWidgetItem | None:
        for item in self._items():
            if item.data(0, Qt.ItemDataRole.UserRole) == run_id:
                return item
        return None

    def _select_row(self, run_id: str) -> None:
        item = self._find_item(run_id)
        if item is None:
            return
        self.runs_tree.blockSignals(True)
        self.runs_tree.clearSelection()
        item.setSelected(True)
        self.runs_tree.blockSignals(False)

    def _update_row(self, status: Any) -> None:
        item = self._find_item(status.run_id)
        if item is None:
            return
        item.setText(2, status.state)
        item.setForeground(2, pg.mkColor(STATE_COLOURS.get(status.state, "#333")))
        last = {"state": status.state, "step": status.step, "total_steps": status.total_steps,
                "message": status.message, "metrics": status.metrics,
                "encoder": status.encoder}
        outcome = run_outcome(last)
        item.setText(5, outcome)
        item.setToolTip(5, outcome)

    @Slot()
    def _run_selected(self) -> None:
        items = self.runs_tree.selectedItems()
        if items:
            self.attach(items[0].data(0, Qt.ItemDataRole.UserRole))

    # -- closing -----------------------------------------------------------------------------
    def _gone(self) -> bool:
        """Whether late task results must be dropped (panel shut down or already deleted)."""
        return self._closed or not shiboken6.isValid(self)

    def shutdown(self) -> None:
        """Stop polling and drop late results; the runs themselves go on."""
        self._closed = True
        self.poll_timer.stop()
        self.list_timer.stop()
        for task in (self._poll_task, self._list_task):
            if task is not None and task.running:
                task.cancel()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        """Closing never stops a run (it is a separate process); only the polling ends."""
        self.shutdown()
        super().closeEvent(event)

