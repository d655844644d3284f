"""A run folder on disk: resolved config, per-epoch metrics, atomic checkpoints, summary, curves, table.

Layout of ``RunDir(path)``::

    run.json             the run id and the resolved settings, written when the folder is claimed
    run.lock             the pid of the process running (or last running) the run; locked while it runs
    config.json          resolved settings (+ the models' per-layer settings), written once
    metrics.jsonl        one JSON object per epoch of every stage
    checkpoints/last.pt  everything needed to resume exactly (written atomically after every epoch)
    checkpoints/best.pt  the best-validation weights of the stage in progress
    models/<row>.pt      final weights of the teacher and of each student row (``save_model`` format)
    summary.json         the run's summary (what ``fitnets_fast.train`` returns)
    curves.png           training curves of every stage

Guarantees:

* Every file is written to a temporary name (``.<name>.<random>.tmp``) in the same folder and renamed over
  the old one, so an interruption (Ctrl-C, kill -9, a crash, a full disk) leaves the previous version
  intact; leftover temporary files are removed when the run starts or resumes. Files get the mode the
  process umask gives any new file.
* ``RunDir.create`` claims a fresh folder atomically (a ``-2``, ``-3``, ... suffix when the default name is
  taken) and ``RunDir.claim`` locks an existing one (``fcntl.flock``, released by the OS when the process
  dies): one process at a time runs a folder, and a second one is refused with the holder's pid.
* Checkpoints carry the run id; a checkpoint from another run is refused before any file is changed.
* ``RunDir.repair_metrics`` brings ``metrics.jsonl`` back to the records a checkpoint covers (dropping later
  records and a partial last line, and saying so) before a resume appends to it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["CheckpointError", "RunFolderError", "RunInterrupted", "RunDir", "atomic_write", "save_model",
           "load_model_file", "format_table"]

CHECKPOINT_FORMAT = "fitnets_fast/run-checkpoint-v1"
RUN_FORMAT = "fitnets_fast/run-v1"
TMP_SUFFIX = ".tmp"
MODEL_FORMAT = "fitnets_fast/model-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt, of the wrong kind or from another run."""


class RunFolderError(RuntimeError):
    """A run folder cannot be used: it is not a folder, not writable, or another process is running it."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C. ``run_dir``: its folder; ``has_checkpoint``: whether ``--resume`` continues
    from a saved epoch (else it starts the run again from the beginning with the saved settings)."""

    def __init__(self, run_dir: str, has_checkpoint: bool):
        super().__init__(run_dir)
        self.run_dir, self.has_checkpoint = run_dir, has_checkpoint

    def __reduce__(self):   # pickled whole: a seed's worker process sends it back to the parent
        return type(self), (self.run_dir, self.has_checkpoint)

    def advice(self) -> str:
        """One sentence on the state of the folder and how to continue."""
        if self.has_checkpoint:
            return (f"interrupted: the last checkpoint is intact; continue with "
                    f"`fitnets-fast train --resume {self.run_dir}`")
        return (f"interrupted before the first checkpoint: nothing was saved yet; "
                f"`fitnets-fast train --resume {self.run_dir}` starts this run again from the beginning")


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its previous content and the temporary
    file is removed (when the process survives).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:   # mode 0o666 masked by the umask, like any new file (not mkstemp's 0o600)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load(path: Path, expected_format: str, map_location) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or garbage files
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {expected_format!r} file (found {found!r})")
    return obj


def save_model(path: Path, *, model_name: str, model_options: Dict[str, Any], num_classes: int,
               state_dict: Dict[str, torch.Tensor], data: Dict[str, Any], role: str) -> None:
    """Write a self-describing model file: enough to rebuild the model and its test data (``eval``)."""
    obj = {"format": MODEL_FORMAT, "model": model_name, "options": model_options, "num_classes": num_classes,
           "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "data": data, "role": role}
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_model_file(path: Path, map_location="cpu") -> Dict[str, Any]:
    """Read a ``save_model`` file; raises ``CheckpointError`` when missing, corrupt or of another kind."""
    return _load(Path(path), MODEL_FORMAT, map_location)


def _folder_error(path: Path, exc: OSError) -> RunFolderError:
    """A one-sentence error for an OS failure to create or write the run folder ``path``."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return RunFolderError(f"{str(path)!r} (or a folder above it) is a file, not a folder; give a folder path")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunFolderError(f"cannot write in {str(path)!r}: {exc.strerror}; choose a writable folder")
    return RunFolderError(f"cannot use {str(path)!r}: {exc.strerror or exc}")


def _mkdirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _folder_error(path, exc) from exc


class RunDir:
    """The files of one run (see the module docstring).

    ``RunDir(path)`` only names the files; ``RunDir.create`` (a new run) and ``claim`` (a resume) also lock
    the folder for this process until ``release``.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.run_path = self.path / "run.json"
        self.lock_path = self.path / "run.lock"
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.plot_path = self.path / "curves.png"
        self.last_path = self.path / "checkpoints" / "last.pt"
        self.best_path = self.path / "checkpoints" / "best.pt"
        self._lock_fd: Optional[int] = None
        self._run_id: Optional[str] = None

    def model_path(self, row: str) -> Path:
        return self.path / "models" / f"{row}.pt"

    # -- claiming the folder ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Optional[str], *, default: str, settings: Dict[str, Any]) -> "RunDir":
        """Claim a folder for a new run, lock it, and write ``run.json`` (a fresh run id and ``settings``).

        ``path``: the folder wanted; it may exist if it holds no run. None: ``default`` is created, or
        ``default-2``, ``default-3``, ... when taken (one atomic ``mkdir`` each), so two processes started at
        the same time never share a folder. Raises ``ValueError`` when ``path`` already holds a run and
        ``RunFolderError`` when it cannot be created or written, or another process has it locked.
        """
        if path is None:
            base = Path(default)
            _mkdirs(base.parent)
            n = 1
            while True:
                folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
                try:
                    os.mkdir(folder)
                    break
                except FileExistsError:
                    n += 1
                except OSError as exc:
                    raise _folder_error(folder, exc) from exc
        else:
            folder = Path(path)
            _mkdirs(folder)
        run = cls(folder)
        run._lock()
        try:
            if run.holds_run():
                raise ValueError(f"{str(folder)!r} already holds a run; resume it (--resume / resume=) or pick "
                                 f"another folder")
            run.remove_tmp()
            run._run_id = uuid.uuid4().hex
            run.write_json(run.run_path, {"format": RUN_FORMAT, "run_id": run._run_id,
                                          "created": datetime.now(timezone.utc).isoformat(), **settings})
        except BaseException:
            run.release()
            raise
        return run

    def claim(self) -> List[Path]:
        """Lock an existing run folder for this process (to resume it) and remove leftover temporary files
        (returned). Raises ``CheckpointError`` when ``path`` is not a run folder and ``RunFolderError`` when
        another process has it locked or it is not writable."""
        if not self.path.is_dir() or not (self.run_path.is_file() or self.config_path.is_file()):
            raise CheckpointError(f"{str(self.path)!r} is not a run folder (no run.json or config.json)")
        self._lock()
        try:
            return self.remove_tmp()
        except OSError as exc:
            self.release()
            raise _folder_error(self.path, exc) from exc

    def _lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise _folder_error(self.path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "(pid not yet written)"
            os.close(fd)
            raise RunFolderError(f"{str(self.path)!r} is in use by process {holder} (its run or a resume is "
                                 f"still going); wait for it to end or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Unlock the folder (also done by the OS when the process ends). ``run.lock`` stays, naming the last
        holder; removing it would let two processes lock different files."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def holds_run(self) -> bool:
        """Whether the folder holds (the start of) a run."""
        return any(p.exists() for p in (self.run_path, self.config_path, self.last_path))

    def has_results(self) -> bool:
        """Whether the folder holds results that only a checkpoint accounts for: a summary, a model file, or
        more metrics records than the single one a stop in the first epoch (before its checkpoint) leaves."""
        return (self.summary_path.exists() or any(self.model_path("x").parent.glob("*.pt"))
                or len(self.read_metrics()) > 1)

    def remove_tmp(self) -> List[Path]:
        """Delete the temporary files of interrupted atomic writes; returns their paths."""
        removed = []
        for folder in (self.path, self.last_path.parent, self.model_path("x").parent):
            if folder.is_dir():
                for f in folder.glob(f".*{TMP_SUFFIX}"):
                    f.unlink(missing_ok=True)
                    removed.append(f)
        return removed

    @property
    def run_id(self) -> Optional[str]:
        """The id written in ``run.json`` at creation (None for a folder made before run ids existed)."""
        if self._run_id is None and self.run_path.is_file():
            self._run_id = json.loads(self.run_path.read_text())["run_id"]
        return self._run_id

    # -- JSON ---------------------------------------------------------------------------------------
    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2)), mode="w")

    def read_config(self) -> Dict[str, Any]:
        """``config.json``; for a run stopped before writing it, the settings saved in ``run.json``."""
        if self.config_path.is_file():
            return json.loads(self.config_path.read_text())
        if self.run_path.is_file():
            return json.loads(self.run_path.read_text())
        raise CheckpointError(f"{str(self.path)!r} is not a run folder (no run.json or config.json)")

    # -- metrics ------------------------------------------------------------------------------------
    def append_metrics(self, record: Dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _parse_metrics(self) -> Tuple[List[Dict[str, Any]], bytes]:
        """The complete records of ``metrics.jsonl`` and the bytes after its last newline (a partial line)."""
        if not self.metrics_path.is_file():
            return [], b""
        *lines, tail = self.metrics_path.read_bytes().split(b"\n")
        records = []
        for i, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise CheckpointError(f"{str(self.metrics_path)!r} line {i} is not JSON ({exc}); "
                                          f"delete that line or start a new run") from exc
        return records, tail.strip()

    def read_metrics(self) -> List[Dict[str, Any]]:
        """Every complete record (a partial last line, from an interrupted append, is left out)."""
        return self._parse_metrics()[0]

    def repair_metrics(self, n: int) -> Optional[str]:
        """Keep the first ``n`` records (those covered by the checkpoint being resumed), dropping later ones
        and a partial last line; returns a sentence saying what was dropped (None when nothing was)."""
        records, partial = self._parse_metrics()
        if len(records) < n:
            raise CheckpointError(f"{str(self.metrics_path)!r} has {len(records)} records, the checkpoint "
                                  f"expects at least {n}; the folder was edited, so start a new run")
        dropped = len(records) - n
        if not dropped and not partial:
            return None
        atomic_write(self.metrics_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in records[:n])),
                     mode="w")
        what = [f"{dropped} record(s) written after the checkpoint"] if dropped else []
        what += [f"a partial last line ({len(partial)} bytes)"] if partial else []
        return f"{self.metrics_path}: dropped {' and '.join(what)}"

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, state: Dict[str, Any], best: Optional[Dict[str, Any]] = None) -> None:
        """Atomically write ``last.pt`` (and ``best.pt`` first, when given), stamped with the run id."""
        stamp = {"run_id": self.run_id}
        if best is not None:
            atomic_write(self.best_path,
                         lambda f: torch.save({"format": CHECKPOINT_FORMAT + "/best", **stamp, **best}, f))
        atomic_write(self.last_path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **stamp, **state}, f))

    def load_checkpoint(self, map_location="cpu") -> Dict[str, Any]:
        """Read ``last.pt``; raises ``CheckpointError`` when missing, corrupt, of another kind or written by
        another run (its run id differs from ``run.json``'s)."""
        ck = _load(self.last_path, CHECKPOINT_FORMAT, map_location)
        if ck.get("run_id") != self.run_id:
            raise CheckpointError(f"checkpoint {str(self.last_path)!r} belongs to another run (run id "
                                  f"{ck.get('run_id')}, this folder's is {self.run_id}); put this run's own "
                                  f"last.pt back or start a new run")
        return ck

    # -- plot ---------------------------------------------------------------------------------------
    def plot(self, *runs: List[Dict[str, Any]]) -> None:
        """Training curves of one run (``plot(records)``) or of several seeds (``plot(records_0, records_1, ...)``,
        each the ``read_metrics()`` list of one seed's run).

        The first panel sets the rows side by side: each row's validation accuracy (test accuracy when the run
        has no validation split) over the epochs of its accuracy-reporting stage (stage 2 for FitNets). Then one
        panel per (row, stage): losses on the left axis (log scale), accuracies on the right. With several seeds
        each curve is the mean over the seeds that reached that epoch, in a band from their minimum to maximum.
        """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # series[(row, stage)][key][epoch] -> the values of that epoch over the seeds
        series: Dict[tuple, Dict[str, Dict[int, List[float]]]] = {}
        for records in runs:
            for r in records:
                keys = series.setdefault((r["row"], r["stage"]), {})
                for key in ("train_loss", "valid_loss", "train_acc", "valid_acc", "test_acc"):
                    if r.get(key) is not None:
                        keys.setdefault(key, {}).setdefault(r["epoch"], []).append(r[key])
        if not series:
            return
        seeds = f" (mean over {len(runs)} seeds, band: min-max)" if len(runs) > 1 else ""

        def draw(ax, by_epoch: Dict[int, List[float]], style: str, label: str, color=None):
            ep = sorted(by_epoch)
            mean = [sum(by_epoch[e]) / len(by_epoch[e]) for e in ep]
            line, = ax.plot(ep, mean, style, label=label, color=color, marker="o" if len(ep) == 1 else None)
            if len(runs) > 1:
                ax.fill_between(ep, [min(by_epoch[e]) for e in ep], [max(by_epoch[e]) for e in ep],
                                color=line.get_color(), alpha=0.2, linewidth=0)

        n_panels = len(series) + 1
        cols = min(3, n_panels)
        rows = (n_panels + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat[n_panels:]:
            ax.axis("off")
        first = axes.flat[0]
        final_stage: Dict[str, tuple] = {}   # row -> its last stage that reports accuracy
        for (row, stage), keys in series.items():
            if "valid_acc" in keys or "test_acc" in keys:
                final_stage[row] = (row, stage)
        acc_key = "valid_acc" if any("valid_acc" in series[k] for k in final_stage.values()) else "test_acc"
        for row, key in final_stage.items():
            if acc_key in series[key]:
                draw(first, series[key][acc_key], "-", f"{row} ({key[1]})")
        first.set_xlabel("epoch of the stage")
        first.set_ylabel(acc_key.replace("_", " "))
        first.set_title("rows side by side" + (" (mean, min-max band)" if len(runs) > 1 else ""))
        first.legend(fontsize=7, loc="lower right")
        for ax, ((row, stage), keys) in zip(axes.flat[1:], series.items()):
            for key, style in (("train_loss", "-"), ("valid_loss", "--")):
                if key in keys:
                    draw(ax, keys[key], style, key)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(f"{row} / {stage}")
            acc_keys = [k for k in ("train_acc", "valid_acc", "test_acc") if k in keys]
            lines, labels = ax.get_legend_handles_labels()
            if acc_keys:
                ax2 = ax.twinx()
                colors = iter(["C2", "C3", "C4"])
                for key in acc_keys:
                    draw(ax2, keys[key], ":", key, next(colors))
                ax2.set_ylabel("accuracy")
                l2, lb2 = ax2.get_legend_handles_labels()
                lines, labels = lines + l2, labels + lb2
            ax.legend(lines, labels, fontsize=7, loc="center right")
        if seeds:
            fig.suptitle(seeds.strip(" ()"), fontsize=9)
        fig.tight_layout()
        atomic_write(self.plot_path, lambda f: fig.savefig(f, format="png", dpi=80))
        plt.close(fig)


def _fmt_count(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _pct_stats(stats: Optional[Dict[str, Any]]) -> str:
    """``mean ± sample std`` in percent (just the mean when there is one seed)."""
    if stats is None:
        return "-"
    if stats["std"] is None:
        return f"{100 * stats['mean']:.2f}%"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}%"


def format_table(summary: Dict[str, Any]) -> str:
    """The run's result table: one line per row (teacher first) with test accuracy at the best-validation
    epoch and at the last epoch, parameters, multiplications and inference speed-up over the teacher.

    For a multi-seed summary (``fitnets_fast.seeds``) the accuracies are the mean ± sample standard deviation
    over seeds, ``n`` is the number of seeds each row has, ``epochs`` the range over seeds and ``speed-up``
    the mean; a line above the table names the seeds and how the teacher was obtained."""
    multi = "seeds" in summary
    acc_w = 18 if multi else 10
    head = (f"{'row':<16}{'model':<16}{'acc(best)':>{acc_w}}{'acc(last)':>{acc_w}}" + (f"{'n':>4}" if multi else "")
            + f"{'epochs':>8}{'params':>10}{'mults':>10}{'speed-up':>10}")
    lines = [head, "-" * len(head)]
    if multi:
        seeds = summary["seeds"]
        lines.insert(0, f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))}); teacher: "
                        f"{summary.get('teacher_source', 'each seed trains its own teacher')}")
    for r in summary["rows"]:
        if multi:
            best, last = _pct_stats(r.get("test_acc_best")), _pct_stats(r.get("test_acc_last"))
            ep = r.get("epochs")
            epochs = "-" if ep is None else (f"{ep['min']:.0f}" if ep["min"] == ep["max"]
                                             else f"{ep['min']:.0f}-{ep['max']:.0f}")
            speedup = None if r.get("speedup") is None else r["speedup"]["mean"]
            n = f"{r.get('n', '-'):>4}"
        else:
            best, last = _pct(r.get("test_acc_best")), _pct(r.get("test_acc_last"))
            epochs, speedup, n = str(r.get("epochs", "-")), r.get("speedup"), ""
        speed = "-" if speedup is None else f"{speedup:.2f}x"
        lines.append(f"{r['row']:<16}{r['model']:<16}{best:>{acc_w}}{last:>{acc_w}}{n}{epochs:>8}"
                     f"{_fmt_count(r.get('params')):>10}{_fmt_count(r.get('mults')):>10}{speed:>10}")
    lines.append("acc(best): test accuracy at the best-validation epoch; acc(last): at the last epoch; "
                 "speed-up: teacher / model inference time over the test set")
    if multi:
        lines.append("mean ± sample standard deviation over seeds; n: seeds per row; epochs: range over seeds; "
                     "speed-up: mean")
    return "\n".join(lines)
