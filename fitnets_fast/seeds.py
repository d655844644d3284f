"""Several seeds of one preset: a run folder per seed, then the mean ± sample std of every row.

``train_seeds(preset, out_dir, seeds=[0, 1, 2], ...)`` runs ``fitnets_fast.trainer.train`` once per seed,
each in its own sub-folder, and aggregates. Layout of a multi-seed run folder::

    run.json, run.lock   the run's id; the lock held by the process running or resuming it (as a single run's)
    seeds.json           what was asked (preset, seeds, overrides, data_dir, device); written first
    seed-<n>/            a complete single run (config.json, metrics.jsonl, checkpoints, models, summary.json,
                         curves.png), resumable (``fitnets-fast train --resume <run>/seed-<n>``) and
                         evaluable (``fitnets-fast eval <run>/seed-<n>/models/<row>.pt``) on its own
    summary.json         every seed's rows and, per row, the aggregate of acc(best) and acc(last) over seeds
    curves.png           mean curves over seeds with a min-max band (``RunDir.plot``)

By default every seed trains its own teacher, so the spread includes the teacher's variance. With the config
field ``shared_teacher`` the first seed trains the teacher and the others load its ``models/teacher.pt``
through ``teacher_checkpoint``: only the students vary (the teacher row then has n = 1). A preset run with
``teacher_checkpoint`` already set shares that teacher in the same way.

Seeds run in parallel worker processes (``workers``, default one per CPU core up to the number of seeds, two
per core when the config sets ``num_threads=1``; each worker's torch uses ``cores // workers`` threads unless
the config sets ``num_threads``; forked on
Linux unless CUDA is already initialised, else spawned); with
``workers=1`` they run one after the other in this process (progress bars and ``callback`` work then). A
shared teacher's seed runs first, alone. ``train_seeds(resume=RUN_DIR)`` finishes every seed: a finished
seed (``summary.json``) is read, an interrupted one resumed from its checkpoint, one not started (or stopped
before its first checkpoint) started from scratch.

The folder has a single run's guarantees: it is created atomically (``runs/<preset>-<time>``, with a ``-2``,
... suffix when two runs start in the same second) and locked for the whole run or resume, so a second
process on it gets ``RunFolderError`` naming the holder; Ctrl-C raises ``RunInterrupted`` naming the parent
folder, whose resume finishes every seed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .config import make_config
from .run_files import RunDir, RunInterrupted, format_table

__all__ = ["train_seeds", "aggregate", "is_multi_seed_run", "parse_seeds", "default_seeds", "seed_dir",
           "multi_seed_folder", "finish_seed", "write_aggregate", "check_seeds", "DEFAULT_SEEDS", "MANIFEST"]

MANIFEST = "seeds.json"
_FORMAT = "fitnets_fast/seeds-v1"

#: Seeds that ``fitnets-fast train`` runs for a preset when neither ``--seed`` nor ``--seeds`` is given
#: (other presets: seed 0, a single run folder). The digits preset is small enough to repeat: one seed's
#: table cannot tell its rows apart (one test image is 0.28 points).
DEFAULT_SEEDS: Dict[str, List[int]] = {"digits": [0, 1, 2]}


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_seeds(preset: str) -> Optional[List[int]]:
    """The seeds of ``preset``'s command-line run (``DEFAULT_SEEDS``); None (one run, seed 0) for other
    presets and under torchrun, whose processes train one run together."""
    return None if _under_torchrun() else DEFAULT_SEEDS.get(preset)


def parse_seeds(text: str) -> List[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``ValueError`` on anything but distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    return check_seeds(seeds)


def check_seeds(seeds: Sequence[int]) -> List[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return seeds


def aggregate(values: Sequence[float]) -> Dict[str, Any]:
    """``{"mean", "std", "n", "min", "max", "values"}`` of ``values``; ``std`` is the sample standard
    deviation (``n - 1`` in the denominator), None for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("aggregate needs at least one value")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "min": min(values), "max": max(values), "values": values}


def is_multi_seed_run(path) -> bool:
    """True when ``path`` is the parent folder of a multi-seed run (it holds ``seeds.json``)."""
    return (Path(path) / MANIFEST).is_file()


def seed_dir(run_dir, seed: int) -> Path:
    """The sub-folder of ``seed`` in a multi-seed run."""
    return Path(run_dir) / f"seed-{seed}"


# -- one seed ---------------------------------------------------------------------------------------------

def _seed_summary(job: Dict[str, Any], quiet: bool = True,
                  callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Finish one seed's run folder (read, resume or start it) and return its summary."""
    from . import trainer

    return finish_seed(
        job["dir"],
        start=lambda: trainer.train(job["preset"], out_dir=job["dir"], data_dir=job["data_dir"],
                                    device=job["device"], seed=job["seed"], quiet=quiet, callback=callback,
                                    **job["overrides"]),
        resume=lambda: trainer.train(resume=job["dir"], data_dir=job["data_dir"], device=job["device"],
                                     quiet=quiet, callback=callback))


def finish_seed(path, start: Callable[[], Dict[str, Any]], resume: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """The summary of the seed folder ``path`` of a (locked) multi-seed run: read when finished,
    ``resume()`` when it has a checkpoint, else (not started, or stopped before its first checkpoint: nothing
    trained to keep) the folder is removed and ``start()`` runs it from the beginning."""
    run = RunDir(path)
    if run.summary_path.is_file():
        return json.loads(run.summary_path.read_text())
    if run.last_path.is_file():
        return resume()
    shutil.rmtree(run.path, ignore_errors=True)
    return start()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker(job: Dict[str, Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    summary = _seed_summary(job)
    return {"summary": summary, "wall_seconds": time.perf_counter() - t0}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _default_workers(num_seeds: int, seed_threads: Optional[int]) -> int:
    """Seeds run at once by default: one per core, or, when every seed runs on one thread (``num_threads=1``),
    up to two per core, time-sliced by the OS. Then no core idles while the last seed finishes alone: the
    digits preset's 3 seeds took 1 min 37 s on 2 cores this way, 1 min 48 s with one worker per core."""
    per_core = 2 if seed_threads == 1 else 1
    return max(1, min(num_seeds, per_core * _cores()))


def _context():
    """Fork where it is safe (no CUDA context yet): workers start at once, with torch already imported, where
    a spawned worker imports it again (seconds each, minutes on a busy machine). Else spawn."""
    import torch

    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_jobs(jobs: List[Dict[str, Any]], workers: int, threads: int, quiet: bool,
              callback: Optional[Callable[[Dict[str, Any]], None]]) -> Dict[int, Dict[str, Any]]:
    """Every job's summary by seed: in this process when ``workers == 1``, else in worker processes."""
    out: Dict[int, Dict[str, Any]] = {}
    if workers == 1:
        for job in jobs:
            out[job["seed"]] = _seed_summary(job, quiet, callback)
        return out
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_worker_init,
                               initargs=(threads,))
    try:
        futures = {job["seed"]: pool.submit(_worker, job) for job in jobs}
        errors = []
        for seed, future in futures.items():
            try:
                result = future.result()
            except Exception as exc:   # let the other seeds finish (and checkpoint) before raising
                errors.append(exc)
                continue
            out[seed] = result["summary"]
            if not quiet:
                print(f"seed {seed}: done in {result['wall_seconds']:.0f} s ({out[seed]['run_dir']})", flush=True)
        if errors:
            raise errors[0]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


# -- the multi-seed run -----------------------------------------------------------------------------------

def train_seeds(preset: str = "digits", out_dir: Optional[str] = None, data_dir: Optional[str] = None,
                device: Optional[str] = None, seeds: Sequence[int] = (0, 1, 2), *, resume: Optional[str] = None,
                quiet: bool = False, callback: Optional[Callable[[Dict[str, Any]], None]] = None,
                workers: Optional[int] = None, **overrides: Any) -> Dict[str, Any]:
    """Run ``preset`` once per seed of ``seeds`` and return the aggregated summary (also written to
    ``<out_dir>/summary.json``, with ``curves.png``; the table is printed unless ``quiet``).

    ``out_dir`` (default ``runs/<preset>-<UTC time>``, with a ``-2``, ... suffix when taken) must not hold a
    run; it is claimed and locked before anything runs. Each seed's run goes to
    ``<out_dir>/seed-<n>``. ``data_dir``, ``device``, ``overrides`` (any ``Config`` field but ``seed``) are
    those of ``fitnets_fast.trainer.train``. ``resume``: a multi-seed run folder to finish (``preset``,
    ``seeds`` and ``overrides`` come from its ``seeds.json``). ``workers``: processes running seeds at once
    (default: one per CPU core, at most one per seed; a ``callback``, called with each epoch's metrics
    record, needs ``workers=1``). Raises ``RunFolderError`` when another process holds the folder and
    ``RunInterrupted`` (naming this folder, to resume) on Ctrl-C.

    Summary keys: ``seeds``, ``teacher_source`` (how the teacher was obtained), ``rows`` (per row:
    ``row``, ``model``, ``params``, ``mults``, ``n``, and ``aggregate()`` dicts for ``test_acc_best``,
    ``test_acc_last``, ``epochs``, ``speedup``), ``per_seed`` (each seed's run folder and rows, as its own
    summary has them), ``train_seconds`` (summed over seeds), ``wall_seconds`` of this call, ``files``.
    """
    from .trainer import default_out_dir, resolve_device

    t0 = time.perf_counter()
    if _under_torchrun():
        raise ValueError("several seeds cannot run under torchrun; launch one run per seed (--seed N)")
    if resume is not None and overrides:
        raise ValueError(f"resume takes the saved settings; got overrides {sorted(overrides)}")
    manifest = None
    if resume is None:
        seeds = check_seeds(seeds)
        if "seed" in overrides:
            raise ValueError("give the seeds with seeds=[...], not seed=")
        make_config(preset, **overrides)          # bad settings fail here, before any folder or process
        resolve_device(device)
        manifest = {"kind": "train", "preset": preset, "seeds": seeds, "overrides": overrides,
                    "data_dir": data_dir, "device": device}
    with multi_seed_folder(out_dir, default_out_dir(preset), manifest, resume) as (run, manifest):
        if resume is not None:
            preset, seeds, overrides = manifest["preset"], manifest["seeds"], manifest["overrides"]
            data_dir = data_dir if data_dir is not None else manifest["data_dir"]
            device = device if device is not None else manifest["device"]
        per_seed, teacher_source, teacher_shared = _train_all_seeds(
            run, preset, data_dir, device, seeds, overrides, quiet, callback, workers)
        return write_aggregate(run, per_seed, seeds, teacher_shared, t0, quiet, preset=preset,
                               teacher_source=teacher_source)


@contextmanager
def multi_seed_folder(out_dir: Optional[str], default: str, manifest: Optional[Dict[str, Any]],
                      resume: Optional[str]) -> Iterator[Tuple[RunDir, Dict[str, Any]]]:
    """The parent folder of a multi-seed run, locked while the ``with`` block runs: ``(RunDir, manifest)``.

    A new run (``resume`` None): ``out_dir`` (or ``default``, ``default-2``, ...) is created atomically as a
    single run's (``RunDir.create``) and ``manifest`` (what was asked) written to ``seeds.json``. A resume:
    the folder ``resume`` is locked (``RunDir.claim``) and its ``seeds.json`` read. A second process on the
    folder gets ``RunFolderError``; Ctrl-C inside the block raises ``RunInterrupted`` naming the folder."""
    if resume is None:
        run = RunDir.create(out_dir, default=default, settings={"kind": "seeds", "seeds": manifest["seeds"]})
    else:
        run = RunDir(resume)
        if not is_multi_seed_run(run.path):
            raise ValueError(f"{str(run.path)!r} is not a multi-seed run folder (no {MANIFEST})")
        run.claim()
    try:
        if resume is None:
            manifest = {"format": _FORMAT, **manifest}
            run.write_json(run.path / MANIFEST, manifest)
        else:
            manifest = json.loads((run.path / MANIFEST).read_text())
            if manifest.get("format") != _FORMAT:
                raise ValueError(f"{str(run.path / MANIFEST)!r} is not a {_FORMAT!r} file")
        try:
            yield run, manifest
        except KeyboardInterrupt:
            raise RunInterrupted(str(run.path), True) from None
    finally:
        run.release()


def write_aggregate(run: RunDir, per_seed: List[Dict[str, Any]], seeds: List[int], teacher_shared: bool,
                    t0: float, quiet: bool, **extra: Any) -> Dict[str, Any]:
    """Aggregate the seeds' summaries (``per_seed``, in ``seeds`` order) into the parent folder ``run``:
    write ``summary.json`` (with ``extra`` keys, ``wall_seconds`` since ``t0`` and the files) and
    ``curves.png``, print the table unless ``quiet``, and return the summary."""
    summary = _aggregate_runs(per_seed, seeds, teacher_shared=teacher_shared)
    summary.update(extra, run_dir=str(run.path), wall_seconds=round(time.perf_counter() - t0, 2),
                   files={"manifest": str(run.path / MANIFEST), "summary": str(run.summary_path),
                          "plot": str(run.plot_path), "seeds": {str(s): str(seed_dir(run.path, s)) for s in seeds}})
    run.plot(*[RunDir(seed_dir(run.path, s)).read_metrics() for s in seeds])
    run.write_json(run.summary_path, summary)
    if not quiet:
        print(format_table(summary))
    return summary


def _train_all_seeds(run: RunDir, preset: str, data_dir: Optional[str], device: Optional[str], seeds: List[int],
                     overrides: Dict[str, Any], quiet: bool, callback, workers: Optional[int]
                     ) -> Tuple[List[Dict[str, Any]], str, bool]:
    """Finish every seed's sub-folder of the (locked) multi-seed folder ``run``: ``(the seeds' summaries in
    ``seeds`` order, how the teacher was obtained, whether the seeds share one teacher)``."""
    cfg = make_config(preset, **overrides)
    if workers is None:
        workers = 1 if callback is not None else _default_workers(len(seeds), cfg.num_threads)
    if workers < 1 or (callback is not None and workers != 1):
        raise ValueError(f"workers must be >= 1 (1 with a callback), got {workers!r}")
    threads = max(1, _cores() // workers)

    jobs = [{"seed": s, "dir": str(seed_dir(run.path, s)), "preset": preset, "data_dir": data_dir,
             "device": device, "overrides": dict(overrides)} for s in seeds]
    teacher_source = "each seed trains its own teacher"
    teacher_shared = cfg.teacher_checkpoint is not None or cfg.shared_teacher
    summaries: Dict[int, Dict[str, Any]] = {}
    if cfg.teacher_checkpoint is not None:
        teacher_source = f"every seed loads the teacher {cfg.teacher_checkpoint}"
    elif cfg.shared_teacher:
        first = jobs[0]
        teacher_file = RunDir(first["dir"]).model_path("teacher").resolve()
        teacher_source = f"shared: trained by seed {first['seed']}, loaded by the others"
        summaries.update(_run_jobs([first], 1, threads, quiet, callback))
        jobs = jobs[1:]
        for job in jobs:
            job["overrides"]["teacher_checkpoint"] = str(teacher_file)
    summaries.update(_run_jobs(jobs, min(workers, max(len(jobs), 1)), threads, quiet, callback))

    return [summaries[s] for s in seeds], teacher_source, teacher_shared


def _aggregate_runs(per_seed: List[Dict[str, Any]], seeds: List[int], teacher_shared: bool) -> Dict[str, Any]:
    """The aggregate summary of the seeds' summaries (same preset and rows, in ``seeds`` order)."""
    first = per_seed[0]
    rows = []
    for i, r0 in enumerate(first["rows"]):
        name = r0["row"]
        # A shared teacher is one model: its row counts once (the seed that trained or first loaded it).
        runs = per_seed[:1] if name == "teacher" and teacher_shared else per_seed
        mine = [s["rows"][i] for s in runs]
        if any(r["row"] != name for r in mine):
            raise ValueError(f"the seeds' summaries list different rows ({name!r} vs {[r['row'] for r in mine]})")
        row = {"row": name, "model": r0["model"], "params": r0.get("params"), "mults": r0.get("mults"),
               "n": len(mine)}
        for key in ("test_acc_best", "test_acc_last", "epochs", "speedup"):
            vals = [r.get(key) for r in mine]
            row[key] = aggregate(vals) if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals) \
                else None
        rows.append(row)
    return {"seeds": list(seeds), "dataset": first.get("dataset"), "teacher": first.get("teacher"),
            "student": first.get("student"), "device": first.get("device"), "choices": first.get("choices"),
            "rows": rows,
            "per_seed": [{"seed": s, "run_dir": summ["run_dir"], "rows": summ["rows"],
                          "train_seconds": summ.get("train_seconds")} for s, summ in zip(seeds, per_seed)],
            "train_seconds": round(sum(summ.get("train_seconds") or 0.0 for summ in per_seed), 2)}
