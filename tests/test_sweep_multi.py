"""Two-objective sweeps (issue 21 item 3): Optuna multi-objective over Ray Tune, the Pareto front recorded on
the parent MLflow run, and the rule that picks the configuration re-trained. Real local Ray, real MLflow SQLite,
the bundled digits."""
from __future__ import annotations

import json

import pytest

import methods
from orchestrator import search_space, sweep, tracking
from orchestrator.cli import main
from orchestrator.errors import UserError

FIGR = methods.get("figr").default_config

TINY_TWO = """
metrics: [val_class_hit, val_fid_domain]
params:
  inner_lr:    {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
  meta_lr:     {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}
fixed: {width: 8, eval_every: 2, val_generate: 72, n_generate: 40, adapt_steps: 2, inner_steps: 2, n_val: 2}
"""


def point(tid: str, hit: float, fid: float) -> dict:
    return {"trial_id": tid, "values": {"val_class_hit": hit, "val_fid_domain": fid}}


def test_space_file_with_metrics_is_multi_objective(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY_TWO)
    space = search_space.load(path, FIGR)
    assert space.multi and space.metrics == ("val_class_hit", "val_fid_domain") and space.modes == ("max", "min")
    assert (space.metric, space.mode) == ("val_class_hit", "max")  # the first is primary
    again = search_space.parse(space.to_dict(), path, FIGR)  # sweep.json round trip (a resumed sweep)
    assert again.metrics == space.metrics and again.modes == space.modes
    for bad, words in (("metrics: [val_class_hit]\n", "two or more"),
                       ("metrics: [val_class_hit, class_hit]\n", "not reported during training"),
                       ("metrics: [val_class_hit, val_class_hit]\n", "twice"),
                       ("metric: val_class_hit\nmetrics: [val_class_hit, val_fid_domain]\n", "keep one")):
        path.write_text(bad + "params:\n  inner_lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
        with pytest.raises(UserError, match=words):
            search_space.load(path, FIGR)


def test_pareto_front_and_pick_rule():
    pts = [point("a", 0.90, 200.0), point("b", 0.70, 100.0), point("c", 0.60, 120.0),  # c dominated by b
           point("d", 0.80, 118.0), point("e", 0.95, 400.0)]
    front = sweep.pareto_front(pts, ("val_class_hit", "val_fid_domain"), ("max", "min"))
    assert [p["trial_id"] for p in front] == ["a", "b", "d", "e"]
    # Best FID on the front 100: within 25% means FID <= 125, so b (0.70) and d (0.80): d has the higher class_hit.
    assert sweep.pick_from_front(front, ("val_class_hit", "val_fid_domain"), ("max", "min"))["trial_id"] == "d"
    # A looser tolerance admits a (FID 200 <= 100 * 2.5) with class_hit 0.90.
    assert sweep.pick_from_front(front, ("val_class_hit", "val_fid_domain"), ("max", "min"), 1.5)["trial_id"] == "a"
    # FID primary: the lowest FID among points whose class_hit is within 25% of the best (0.95 -> >= 0.7125).
    assert sweep.pick_from_front(front, ("val_fid_domain", "val_class_hit"), ("min", "max"))["trial_id"] == "d"


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mlflow_multi")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.mark.slow  # a whole 3-trial Tune sweep; the objective parsing and the pick rule are tested above
def test_two_objective_sweep_records_a_pareto_front(store, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY_TWO.replace("metrics: [val_class_hit, val_fid_domain]", "metric: val_fid_domain"))
    rc = main(["sweep", "figr", "--trials", "3", "--concurrency", "2", "--steps", "4", "--space", str(space),
               "--objectives", "val_class_hit,val_fid_domain", "--seed", "1", "--tracking-uri", store,
               "--experiment", "multi", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["trials_completed"] == 3 and out["trials_stopped_early"] == 0  # no ASHA with two objectives
    assert out["objectives"] == ["val_class_hit", "val_fid_domain"] and out["metric"] == "val_class_hit"

    c = tracking.client(store)
    parent = c.get_run(out["parent_run_id"])
    assert parent.data.params["sweep.objectives"] == "val_class_hit,val_fid_domain"
    record = tracking.load_json_artifact(store, out["parent_run_id"], "pareto_front.json")
    trials = record["trials"]
    assert len(trials) == 3 and record["objectives"] == ["val_class_hit", "val_fid_domain"]
    assert record["front"] and record["picked_trial_id"] in record["front"] == [
        t["trial_id"] for t in trials if t["on_front"]]

    def dominates(p, q):  # p at least as good on both, better on one
        ge = p["val_class_hit"] >= q["val_class_hit"] and p["val_fid_domain"] <= q["val_fid_domain"]
        return ge and (p["val_class_hit"] > q["val_class_hit"] or p["val_fid_domain"] < q["val_fid_domain"])

    for t in trials:  # the front is exactly the non-dominated trials
        dominated = any(dominates(o["values"], t["values"]) for o in trials if o is not t)
        assert t["on_front"] == (not dominated), t
        # each trial's values are its child run's validation values at its selected checkpoint
        hist = {int(m.step): m.value for m in c.get_metric_history(t["run_id"], "val_class_hit")}
        assert str(t["step"]) == c.get_run(t["run_id"]).data.tags["selected_step"]
        assert hist[t["step"]] == pytest.approx(t["values"]["val_class_hit"])
    picked = next(t for t in trials if t["trial_id"] == record["picked_trial_id"])
    assert out["best_trial_id"] == picked["trial_id"] and out["best_metric"] == pytest.approx(
        picked["values"]["val_class_hit"])
    assert float(parent.data.params["best.inner_lr"]) == pytest.approx(picked["config"]["inner_lr"])
    note = parent.data.tags["mlflow.note.content"]
    assert "Pareto front" in note and "| val_class_hit | val_fid_domain |" in note
