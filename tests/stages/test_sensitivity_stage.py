"""The sensitivity stage: every probe recorded as it is measured, and an interrupted run resumed."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(300)


@pytest.mark.fault
def test_interrupted_sensitivity_stage_resumes_from_its_partial_file(tmp_path, monkeypatch, capsys):
    """The stage writes every probe to <out>.partial: run again after an interruption, it measures only
    what that file lacks and ends with the scores of an uninterrupted run, its time counting the
    interrupted run's; a partial file measured under other settings is discarded, not mixed in."""
    import json

    import lwpar.evaluation.metrics
    import synthetic
    from lwpar.cli import main
    from lwpar.data.prepare import prepare

    members, _ = synthetic.make_release(persons_per_subset=12, images_per_person=3)
    synthetic.write_zip(tmp_path / "mirror" / "PETA.zip", members)
    params = synthetic.tiny_training_params(tmp_path, tmp_path / "mirror", epochs=1)
    prepare(params, "peta", tmp_path / "prepared", tmp_path / "dl")
    rank = {"policy": "search", "multiple": 8, "search": params["variants"]["lwalm"]["decompose"]["rank"]["search"]}
    rank["search"] = {**{k: v for k, v in rank["search"].items() if k != "fractions"}, "val_images": 16,
                      "calibration_batches": 1}
    params["variants"] = {"probe": {"base": None, "finetune": params["variants"]["lwalm"]["finetune"], "decompose": {
        **{k: v for k, v in params["variants"]["lwalm"]["decompose"].items() if k != "epc"}, "kinds": ["pointwise"],
        "rank": rank, "fit": "weights"}},  # probes that fit outputs: tests/stages/test_chain.py
        "control": {"base": None, "finetune": params["variants"]["lwalm"]["finetune"]}}
    params["experiment"].update(variants=["probe", "control"], int8=[], mixed=[], nncf=[])
    path = synthetic.write_params(tmp_path / "params.yaml", params)
    assert main(["train", "--params", str(path), "--dataset-dir", str(tmp_path / "prepared"), "--model", "tiny",
                 "--out", str(tmp_path / "baseline")]) == 0

    real, calls = lwpar.evaluation.metrics.pedestrian_metrics, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # what a terminal's Ctrl-C or a scheduler's SIGINT does mid-probe
        return real(*args, **kwargs)

    monkeypatch.setattr(lwpar.evaluation.metrics, "pedestrian_metrics", counted)

    def sensitivity(out):
        calls.clear()
        return main(["sensitivity", "--params", str(path), "--model", str(tmp_path / "baseline" / "model.pt"),
                     "--dataset-dir", str(tmp_path / "prepared"), "--variant", "probe", "--out", str(out)])

    # reference run, with a partial file left by other settings beside its output: discarded
    reference = tmp_path / "reference.json"
    stop_at = None
    from lwpar.compress.ranks.sensitivity import cache_settings

    settings = cache_settings(params, params["variants"]["probe"]["decompose"], tmp_path / "baseline" / "model.pt")
    stale = {**settings, "seed": params["seed"] + 1, "variant": "probe", "scores": {"baseline": 1.0}}  # only the seed differs
    reference.with_name("reference.json.partial").write_text(json.dumps(stale))
    assert sensitivity(reference) == 0
    assert "resuming" not in capsys.readouterr().out
    expected = json.loads(reference.read_text())
    total = len(calls)
    assert total >= 8 and len(expected["scores"]) == total and expected["resumed_probes"] == 0
    assert not reference.with_name("reference.json.partial").exists()

    out, partial = tmp_path / "sensitivity.json", tmp_path / "sensitivity.json.partial"
    stop_at = 6
    assert sensitivity(out) == 130
    assert not out.exists(), "an interrupted run must not leave a finished-looking output"
    interrupted = json.loads(partial.read_text())
    assert len(interrupted["scores"]) == 5 and interrupted["seconds"] >= 0
    # the time the interrupted run spent counts in the total (set large here, so that it shows)
    partial.write_text(json.dumps({**interrupted, "seconds": 1000.0}))
    capsys.readouterr()

    stop_at = None
    assert sensitivity(out) == 0
    assert "resuming with 5 probes" in capsys.readouterr().out
    assert len(calls) == total - 5, "only the probes the partial file lacks are measured again"
    resumed = json.loads(out.read_text())
    assert resumed["scores"] == expected["scores"] and resumed["plan"] == expected["plan"]
    assert resumed["resumed_probes"] == 5 and not partial.exists()
    assert 1000.0 <= resumed["seconds"] < 1000.0 + expected["seconds"] + 60
