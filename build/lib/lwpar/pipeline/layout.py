"""Where an experiment's files are, and which model each job starts from.

    <paths.data>/downloads/                          archives taken from the mirror or downloaded
    <paths.data>/prepared/<dataset>/                 the prepared dataset (samples.csv, dataset.json, images/)
    <paths.data>/prepared/<dataset>.manifest.json    its fingerprint: what every later stage depends on
    <paths.results>/<dataset>/<model>/<name>/        one folder per trained, compressed or exported model
    <paths.results>/<dataset>/<model>/profile-<target>.json
    <paths.results>/comparison.{csv,md}, plots/      the report
    logs/<paths.results>/<stage>/<wildcards>.log     each job's log
"""

from __future__ import annotations

from lwpar.compress.recipes import is_control

REFERENCE = "baseline_reference"  # the baseline's weights run through the published ALM head


def prepared(params: dict, dataset: str) -> str:
    """What stages that read a dataset depend on: the prepared folder's manifest, not the folder
    (DVC would hash the folder's every image once per dependent stage on each `dvc status`)."""
    return f"{params['paths']['data']}/prepared/{dataset}.manifest.json"


def run_folder(params: dict, w: dict, name: str) -> str:
    return f"{params['paths']['results']}/{w['dataset']}/{w['model']}/{name}"


def start_model(params: dict, w: dict) -> str:
    """The model a variant compresses: the trained baseline, or with `base` another variant's
    fine-tuned model (multi-stage schedules: compress, fine-tune, compress further, fine-tune)."""
    base = params["variants"][w["variant"]]["base"]
    return f"{run_folder(params, w, base or 'baseline')}/model.pt"


def finetune_start(params: dict, w: dict) -> str:
    """What fine-tuning starts from: the compressed model, or for a control recipe (no compression
    step) its start model itself. Snakemake also asks for names that are no variant (the rule's output
    pattern matches baseline/model.pt): they get a compressed.pt that no rule makes, so the candidate
    job is dropped, as for any other rule whose inputs cannot be made."""
    recipe = params["variants"].get(w["variant"])
    if recipe is None or not is_control(recipe):
        return f"{run_folder(params, w, w['variant'])}/compressed.pt"
    return start_model(params, w)


def source_model(params: dict, w: dict) -> str:
    """The PyTorch model an ONNX artifact is exported from."""
    name = "baseline" if w["name"] == REFERENCE else w["name"]
    return f"{run_folder(params, w, name)}/model.pt"


def profile_file(params: dict, w: dict, target: str) -> str:
    return f"{params['paths']['results']}/{w['dataset']}/{w['model']}/profile-{target}.json"
