"""Preemption and storage faults, as users meet them (issue 22): SIGTERM to ``train`` (with a NaN selection metric),
then the resume it prints; a full artifact store (a small tmpfs), then the resume once space is freed. Each test
runs the real CLI as its own process (helpers of ``tests/test_faults.py``) and asserts on MLflow's metric
histories that nothing is recorded twice, the evaluation metrics included.

Run: ``python -u -m pytest -q -m faults tests/test_preemption.py`` (the ``faults`` set).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time

import pytest

from orchestrator import tracking
from orchestrator.interrupt import TAG
from tests.test_faults import break_store_mid_run, kill_tree, recorded_step, run_at_step, steps_of, wait_for

# FIGR's tiny settings with 8 generated images per validation class: validation FID is NaN at every step (Ray's
# restored checkpoint list then holds null for it). Selection now defaults to val_class_hit, and a too-small
# val_generate for an FID selection is refused up front (tests/test_bad_input.py), so a NaN *selection* score is
# covered by test_a_nan_selection_score_is_finite_for_ray_and_never_wins; this run keeps NaN metrics in the
# reports that Ray restores on resume.
NAN_SELECT = ["--set", "width=8", "--set", "val_generate=8", "--set", "n_generate=40", "--set", "inner_steps=2",
              "--set", "adapt_steps=1"]
STOP_BOUND_S = 90  # SIGTERM to exit: the clean-up is a few store writes and ray.shutdown


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of ``size`` (e.g. ``3m``) mounted on the new folder ``path`` (a disk that fills), unmounted after;
    the test is skipped where it cannot be mounted (not root, no ``mount``)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(f"needs root to mount a small tmpfs as the full disk (mount -t tmpfs -o size={size})")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)




def no_metric_twice(uri: str, run_id: str) -> None:
    """Every metric of the run (losses, validation, evaluation, budget) has at most one value per step."""
    c = tracking.client(uri)
    for key in c.get_run(run_id).data.metrics:
        steps = [int(m.step) for m in c.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} recorded twice at a step: {sorted(steps)}"


def resume_command(line: str) -> list[str]:
    """The arguments after ``python -m orchestrator`` of the command a one-line message ends with."""
    tail = line.split("python -m orchestrator ", 1)[1]
    return tail.split()


@pytest.mark.faults
def test_sigterm_stops_train_as_interrupted_and_its_resume_records_everything_once(env, tmp_path):
    """SIGTERM (what SLURM, Kubernetes and spot reclaims send first) to the ``train`` process after its first
    recorded checkpoint, with a selection metric that is NaN: exit 143 within a bound, the last stderr line names
    the resume, no Ray abort dump, the run KILLED with ``fsig.interrupted=true``; the printed resume finishes it with
    every step and every metric once; a second resume of the finished run changes no history."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps, exp = 12, "preempted"
    proc, _, err = env.start(["train", "figr", "--tracking-uri", uri, "--experiment", exp, *NAN_SELECT,
                              "--set", "eval_every=4", "--steps", str(steps)])
    try:
        run = wait_for(lambda: run_at_step(uri, exp, 4), 1800, "the first recorded checkpoint", proc, err)
        os.kill(proc.pid, signal.SIGTERM)  # the process alone, as Kubernetes does (PID 1 of the container)
        t0 = time.monotonic()
        proc.wait(timeout=STOP_BOUND_S)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    stderr = err.read_text()
    run_id = run.info.run_id
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 143, stderr[-3000:]
    assert stopped_s < STOP_BOUND_S
    assert last.startswith("interrupted by SIGTERM") and f"train --resume {run_id}" in last, last
    # No abort dump of Ray's C++ handler and no traceback of the command (Ray's own processes may log theirs, prefixed)
    assert "SIGTERM received" not in stderr, stderr[-3000:]
    assert not [x for x in stderr.splitlines() if x.startswith("Traceback")], stderr[-3000:]
    print(f"SIGTERM to exit: {stopped_s:.1f} s")
    run = tracking.get_run(uri, run_id)
    assert run.info.status == "KILLED" and run.data.tags.get(TAG) == "true"
    done = recorded_step(uri, run_id)
    assert done < steps, "the run finished before the signal: nothing was interrupted"
    assert steps_of(uri, run_id, "d_loss") == list(range(1, done + 1))

    code, out, stderr = env.run([*resume_command(last), "--json"])
    assert code == 0, stderr[-3000:]
    run = tracking.get_run(uri, run_id)
    assert run.info.status == "FINISHED" and TAG not in run.data.tags
    assert run.data.metrics["val_fid_domain"] != run.data.metrics["val_fid_domain"]  # NaN: the case under test
    assert steps_of(uri, run_id, "d_loss") == list(range(1, steps + 1))
    assert steps_of(uri, run_id, "meta_steps") == list(range(4, steps + 1, 4))
    assert "class_hit" in run.data.metrics or "fid_domain" in run.data.metrics
    no_metric_twice(uri, run_id)

    before = {k: steps_of(uri, run_id, k) for k in run.data.metrics}
    code, _, stderr = env.run([*resume_command(last)])  # the crash was seen again on a second resume
    assert code == 0, stderr[-3000:]
    assert {k: steps_of(uri, run_id, k) for k in before} == before
    no_metric_twice(uri, run_id)


# ----------------------------------------------------------------------------------- a full artifact store ----

def _fill(folder) -> None:
    """Write a filler file into ``folder`` until its file system says ENOSPC."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


@pytest.mark.faults
def test_full_artifact_store_ends_in_one_line_and_the_resume_records_everything_once(env, tmp_path):
    """The experiment's artifact store is a 3 MB tmpfs, filled up once training's last checkpoint is recorded (so the
    novel-class evaluation and the logged model meet the full disk): exit 2, one ``error:`` line naming the store and
    the resume, no traceback; once space is freed the resume finishes with every metric once, evaluation included."""
    with small_tmpfs(tmp_path / "arts", "3m") as arts:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        exp, steps = "full", 8
        tracking.client(uri).create_experiment(exp, artifact_location=arts.as_uri())
        # exit 2, one error: line, no traceback: checked by break_store_mid_run
        run, _, lines = break_store_mid_run(env, uri, exp, steps, lambda run: _fill(arts), eval_every=4,
                                            break_at=steps, no_traceback=True)
        run_id = run.info.run_id
        assert str(arts) in lines[0] and f"train --resume {run_id}" in lines[0], lines[0]
        assert "No space left on device" in lines[0], lines[0]
        no_metric_twice(uri, run_id)

        (arts / "filler").unlink()  # space freed, and more: the logged model alone needs more than 3 MB
        subprocess.run(["mount", "-o", "remount,size=200m", str(arts)], check=True)
        code, _, stderr = env.run(resume_command(lines[0]))
        assert code == 0, stderr[-3000:]
        run = tracking.get_run(uri, run_id)
        assert run.info.status == "FINISHED" and "fid_domain" in run.data.metrics
        assert steps_of(uri, run_id, "d_loss") == list(range(1, steps + 1))
        no_metric_twice(uri, run_id)


# ------------------------------------------------------------------------- the pieces, fast (default run) ----

def test_a_nan_selection_score_is_finite_for_ray_and_never_wins():
    """What Ray Train gets as the checkpoint score is finite (Ray saves its list as JSON: NaN came back null and the
    restored manager crashed); our own selection never picks a checkpoint whose metric is NaN."""
    import math
    from types import SimpleNamespace

    from orchestrator.loop import WORST_SCORE, best_checkpoint, checkpoint_score

    assert checkpoint_score({"val_fid_domain": float("nan")}, "val_fid_domain") == WORST_SCORE
    assert checkpoint_score({}, "val_fid_domain") == WORST_SCORE
    assert checkpoint_score({"val_fid_domain": 3.0}, "val_fid_domain") == -3.0  # lower FID: higher score
    assert checkpoint_score({"val_class_hit": 0.5}, "val_class_hit") == 0.5
    assert math.isfinite(WORST_SCORE) and WORST_SCORE < -1e299
    nan_first = SimpleNamespace(best_checkpoints=[("a", {"val_fid_domain": float("nan")}), ("b", {"val_fid_domain": 9.0}),
                                                  ("c", {"val_fid_domain": 7.0})], checkpoint="latest", metrics={})
    assert best_checkpoint(nan_first, "val_fid_domain")[0] == "c"
    all_nan = SimpleNamespace(best_checkpoints=[("a", {"val_fid_domain": float("nan")})], checkpoint="latest",
                              metrics={"step": 4})
    assert best_checkpoint(all_nan, "val_fid_domain")[0] == "latest"


def test_sigterm_and_sigint_raise_interrupted_with_their_exit_codes():
    """Inside ``on_signals`` a real SIGTERM / SIGINT to this process raises ``Interrupted`` (exit 143 / 130), a second
    signal while stopping is ignored, and the previous handlers come back afterwards."""
    from orchestrator.interrupt import Interrupted, on_signals

    before = signal.getsignal(signal.SIGTERM)
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with pytest.raises(Interrupted) as err, on_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # never reached: the handler raises as soon as the signal is delivered
        assert err.value.exit_code == code and err.value.signum == sig
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_full_disk_without_a_file_name_names_the_fullest_place(tmp_path):
    """ENOSPC carries no file name (a write() fails, not an open()): the one line names the place the run writes to
    with the least free space; a missing file (ENOENT) is not a storage fault and propagates."""
    import errno

    from orchestrator.recorder import store_failure

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "n", {"a": 1}, {})
    why = store_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), uri, run_id)
    assert why and "KiB free" in why and "[Errno 28] No space left on device" in why, why
    why = store_failure(PermissionError(errno.EACCES, "Permission denied", "/ro/ckpt/model.pt"), uri, run_id)
    assert why and why.startswith("/ro/ckpt/model.pt took no file"), why
    assert store_failure(FileNotFoundError(errno.ENOENT, "no such file", "/data/x.png"), uri, run_id) is None


def test_an_evaluation_recorded_again_adds_nothing_twice(tmp_path):
    """``log_metrics_once``: a resume that evaluates the same checkpoint again logs only what is missing."""
    from orchestrator.lifecycle import log_metrics_once

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "n", {"a": 1}, {})
    assert log_metrics_once(uri, run_id, {"class_hit": 0.5}, 2) == {"class_hit": 0.5}
    assert log_metrics_once(uri, run_id, {"class_hit": 0.5, "fid_domain": 3.0}, 2) == {"fid_domain": 3.0}
    assert log_metrics_once(uri, run_id, {"class_hit": 0.7}, 4) == {"class_hit": 0.7}  # another step: a new value
    assert steps_of(uri, run_id, "class_hit") == [2, 4] and steps_of(uri, run_id, "fid_domain") == [2]


def test_a_full_artifact_store_is_named_in_one_line(tmp_path):
    """A real full disk (a 1 MB tmpfs as the experiment's artifact location, filled): MLflow's copy fails with
    ``OSError: [Errno 28] No space left on device`` and no file name; ``store_failure`` names the run's artifact
    folder on that disk and its free space (what ``train`` then prints, with the resume, exit 2)."""
    from orchestrator.recorder import store_failure

    with small_tmpfs(tmp_path / "arts", "1m") as arts:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        tracking.client(uri).create_experiment("full", artifact_location=arts.as_uri())
        run_id = tracking.start_run(uri, "full", "n", {"a": 1}, {})
        _fill(arts)
        with pytest.raises(OSError) as err:
            tracking.log_dict(uri, run_id, {"per_class": list(range(100_000))}, "per_class.json")
        assert err.value.errno == errno.ENOSPC
        why = store_failure(err.value, uri, run_id)
        assert why and why.startswith(str(arts / run_id / "artifacts")) and "No space left on device" in why, why
