"""The model card: a trained checkpoint described for the Hugging Face Hub, as README.md markdown.

``model_card(state, metrics=..., audit=..., latency=..., int8=..., choice=...)`` words what the inputs
hold and nothing else: the checkpoint (architecture, input contract, classes, temperature, training
settings, the last row of its history), a sweep report's ``metrics.json`` (the scores per split and class,
per dataset, calibration, the search), the data audit's ``audit.json`` (counts per split and class, its
findings), ``fer_core.apps.latency.measure_latency``'s and ``fer_core.apps.int8.int8_report``'s dicts.
Every figure comes from them; an input not given makes its section say what is not known and how to
measure it. The YAML header carries the Hub's card metadata (``library_name``, ``pipeline_tag``, ``tags``,
``license``, ``base_model``, ``datasets``, ``model-index``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..audit import summarize
from ..checkpoint import temperature_of
from ..datasets import entries
from ..preprocess import Preprocess
from .export import INPUT_NAME, OUTPUT_NAME, input_contract

SPLITS = ("val", "test")
# What is known of the public datasets fer_core users train on, keyed by folder name (lower case, no
# separators): words only, every figure of the card comes from its inputs.
KNOWN_DATA = {
    "fer2013": "FER2013: faces found by web image search, cropped, reduced to small gray images; many are "
    "posed or acted expressions, and its labels are known to be noisy",
    "affectnet": "AffectNet: faces from web photos (in the wild, posed and spontaneous), labelled by a "
    "single annotator per image",
    "rafdb": "RAF-DB: web faces in the wild, labelled by crowd votes",
    "ckplus": "CK+: posed expressions of a few actors filmed in a laboratory",
}
TRIAL_STATES = {"stopped_asha": "stopped early by ASHA", "stopped_time": "stopped by the time limit"}
METRIC_NAMES = (
    ("accuracy", "accuracy", "Accuracy"),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "f1", "Macro F1"),
)


def _f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
    ]


def dataset_names(state: dict) -> list[str]:
    """The training data's names: its sources' names as the checkpoint recorded them, else its folders'."""
    sources = (state.get("data") or {}).get("sources") or []
    if sources:
        return [str(s.get("name") or Path(s["root"]).name) for s in sources]
    data = state["config"].get("data")
    return [str(e.get("name") or Path(e["root"]).name) for e in entries(data)] if data else []


def base_model(config: dict) -> str | None:
    """The Hub id of the weights training started from, when timm knows them: the weights file's name
    (``tf_efficientnet_lite0.in1k.safetensors`` -> ``timm/tf_efficientnet_lite0.in1k``) or, with
    ``pretrained``, the model's default weights; None for a random start or an unknown file."""
    from timm.models import get_pretrained_cfg

    if config.get("weights"):
        name = Path(str(config["weights"])).name
        for suffix in (".safetensors", ".pth", ".pt", ".bin"):
            name = name.removesuffix(suffix)
    elif config.get("pretrained"):
        name = str(config["model"])
    else:
        return None
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, ValueError):  # not a timm architecture name at all
        return None
    hub = getattr(cfg, "hf_hub_id", None)
    return (
        hub if hub and hub.startswith("timm/") and (config.get("pretrained") or hub.endswith(name)) else None
    )


def _started_from(config: dict, metrics: dict | None) -> str:
    if metrics and metrics.get("started_from"):
        return str(metrics["started_from"])
    if config.get("weights"):
        return f"the weights file `{Path(str(config['weights'])).name}`"
    return "timm's pretrained weights" if config.get("pretrained") else "random initialisation"


def _split_figures(state: dict, metrics: dict | None) -> dict[str, dict]:
    """{split: {accuracy, balanced_accuracy, macro_f1, samples, recall, precision, f1, support}} from
    metrics.json, else val alone from the checkpoint's last history row (recall only per class)."""
    src = metrics or ((state.get("history") or [{}])[-1])
    out = {}
    for sp in SPLITS:
        if f"{sp}_accuracy" not in src:
            continue
        out[sp] = {
            "accuracy": src.get(f"{sp}_accuracy"),
            "balanced_accuracy": src.get(f"{sp}_balanced_accuracy"),
            "macro_f1": src.get(f"{sp}_macro_f1"),
            "samples": src.get(f"{sp}_samples"),
            **{k: src.get(f"{sp}_per_class_{k}") or {} for k in ("recall", "precision", "f1")},
            "support": src.get(f"{sp}_support") or {},
        }
    return out


def _per_dataset(state: dict, metrics: dict | None) -> dict:
    if metrics is not None:
        return metrics.get("per_dataset") or {}
    out: dict = {}
    for key, value in ((state.get("history") or [{}])[-1]).items():
        name, _, rest = key.partition("/")
        sp, _, what = rest.partition("_")
        if rest and sp in SPLITS:
            out.setdefault(name, {}).setdefault(sp, {})[what] = value
    return out


def _header(state: dict, metrics: dict | None, names: list[str]) -> str:
    config, figures = state["config"], _split_figures(state, metrics)
    model_name = f"{config['model']}-{'-'.join(names) or 'fer'}"

    def result(dataset: str, dtype: str, split: str, values: dict) -> dict:
        return {
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": dataset, "type": dtype, "split": split},
            "metrics": [
                {"type": t, "value": round(float(values[k]), 4), "name": label}
                for k, t, label in METRIC_NAMES
                if values.get(k) is not None
            ],
        }

    results = [
        result(" + ".join(names) or "training data", "+".join(names), sp, v) for sp, v in figures.items()
    ]
    for name, by in _per_dataset(state, metrics).items():
        results += [result(name, name, sp, v) for sp, v in by.items() if len(names) > 1]
    for name, v in ((metrics or {}).get("eval_data") or {}).items():
        results.append(result(name, name, v["split"], v))
    meta = {
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "tags": [
            "image-classification",
            "facial-expression-recognition",
            "timm",
            "onnx",
            "fer_core",
            str(config["model"]),
        ],
        "license": "other",
        "license_name": "unspecified",
    }
    if base := base_model(config):
        meta["base_model"] = base
    if names:
        meta["datasets"] = names
    meta["metrics"] = [t for _, t, _ in METRIC_NAMES]
    if results:
        meta["model-index"] = [{"name": model_name, "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _model_lines(
    state: dict, metrics: dict | None, pre: Preprocess, classes: list[str], t: float
) -> list[str]:
    c = state["config"]
    fitted = (metrics or {}).get("calibration") or {}
    if "temperature" not in state:
        temp = "1 (no temperature was fitted: the probabilities are the plain softmax of the logits)"
    else:
        where = f", fitted on {fitted['fitted_on']} by the sweep's report" if fitted.get("fitted_on") else ""
        temp = f"{t:.4g} (the logits are divided by it before the softmax{where})"
    train = ", ".join(
        f"{k} {c[k]:.4g}" if isinstance(c[k], float) else f"{k} {c[k]}"
        for k in (
            "batch_size",
            "optimizer",
            "lr",
            "weight_decay",
            "label_smoothing",
            "aug_strength",
            "ema_decay",
            "mixup_alpha",
            "cutmix_alpha",
            "class_weighting",
            "dedupe",
            "seed",
        )
        if k in c
    )
    return [
        "## Model",
        "",
        f"- Architecture: timm `{c['model']}`, {len(classes)} outputs, trained by fer_core from "
        f"{_started_from(c, metrics)}.",
        f"- Input contract ({INPUT_NAME!r} of `model.onnx`): {input_contract(pre, classes, t)}.",
        f"- Softmax temperature: {temp}.",
        f"- Training settings: {train}; trained for {state.get('epoch', '?')} epochs.",
        "- Files: `model.onnx` (uint8 pixels in, probabilities out: preprocessing and the tempered softmax are "
        "inside the graph), `model.safetensors` + `config.json` (timm's format: logits out; `config.json` "
        "also holds fer_core's contract under `fer_core`).",
        "",
        f"Classes, in the order of `{OUTPUT_NAME}` and of the logits:",
        "",
        *(f"{i}. {name}" for i, name in enumerate(classes)),
    ]


def _data_lines(state: dict, audit: dict | None, names: list[str], classes: list[str]) -> list[str]:
    c = state["config"]
    roots = entries(c["data"]) if c.get("data") else []
    weights = [f"{n} (weight {e['weight']:g})" if e.get("weight") else n for n, e in zip(names, roots)]
    lines = [
        "## Training data",
        "",
        f"Datasets: {', '.join(weights or names) or 'not recorded'}; "
        f"images decoded at {c.get('img_size')} px, {'grayscale' if c.get('grayscale') else 'RGB'}; "
        f"duplicates of val/test images in train: `dedupe: {c.get('dedupe', 'none')}`.",
    ]
    if not audit:
        return lines + [
            "",
            "Counts per split and class: not known (no audit was given: run "
            "`python -m fer_core.audit DATA --json --out audit.json`, or train with `audit: true`).",
        ]
    rows = [
        [sp, f["images"], *(f["class_counts"].get(k, 0) for k in classes)]
        for sp, f in audit["splits"].items()
    ]
    return lines + [
        "",
        "Images per split and class (the data audit):",
        "",
        *_table(["split", "images", *classes], rows),
    ]


def _choice_lines(state: dict, metrics: dict | None, choice: str) -> list[str]:
    lines = ["## How it was chosen", ""]
    if metrics and metrics.get("trials"):
        tr = metrics["trials"]
        counts = ", ".join(
            f"{v} {TRIAL_STATES.get(k, k.replace('_', ' '))}" for k, v in tr.items() if k != "total"
        )
        params = ", ".join(
            f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}"
            for k, v in (metrics.get("params") or {}).items()
        )
        metric = metrics.get("metric", "?")
        best = metrics.get(f"best_trial_{metric}")
        lines.append(
            f"A hyperparameter sweep of {tr.get('total', '?')} trials ({counts}) ranked by `{metric}` "
            f"({metrics.get('mode', 'max')}). The searched parameters took, in the chosen trial "
            f"`{metrics.get('best_trial', '?')}`"
            + (f" ({metric} {best:.4f} during the search)" if best is not None else "")
            + f": {params or 'none recorded'}. It was then retrained for {metrics.get('retrain_epochs', '?')} "
            f"epochs from {_started_from(state['config'], metrics)}."
        )
    else:
        lines.append(
            "Not known to come from a sweep (no sweep report was given): a single training run of "
            f"{state.get('epoch', '?')} epochs, kept as its best epoch by "
            f"`{state.get('best_metric_name', '?')}`."
        )
    if choice:
        lines += ["", choice]
    return lines


def _class_table(v: dict, classes: list[str], support: dict) -> list[str]:
    rows = [
        [
            k,
            *(_f(v[m].get(k)) if v[m] else "not recorded" for m in ("precision", "recall", "f1")),
            (v["support"] or support).get(k, "not known"),
        ]
        for k in classes
    ]
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _evaluation_lines(state, metrics, audit, classes) -> list[str]:
    figures = _split_figures(state, metrics)
    lines = ["## Evaluation", ""]
    if metrics is None:
        row = (state.get("history") or [{}])[-1]
        lines += [
            f"The figures below are from training's own val evaluation (epoch {row.get('epoch', '?')}, the last "
            "row of the checkpoint's history), not from a sweep report: per class, recall alone was recorded.",
            "",
        ]
    if not figures:
        return lines + ["Not known: the checkpoint records no val evaluation and no metrics.json was given."]
    for sp, v in figures.items():
        support = (audit or {}).get("splits", {}).get(sp, {}).get("class_counts", {})
        n = v["samples"] or sum((v["support"] or support).values())
        lines += [
            f"### {sp}" + (f" ({n} images)" if n else ""),
            "",
            f"Accuracy {_f(v['accuracy'])}, balanced accuracy {_f(v['balanced_accuracy'])}, "
            f"macro-F1 {_f(v['macro_f1'])}.",
            "",
            *_class_table(v, classes, support),
            "",
        ]
    if "test" not in figures:
        lines += [
            "No test-split figures are known: every figure here is on val, which also chose the model, so "
            "they are somewhat optimistic.",
            "",
        ]
    if metrics and "val_tta_accuracy" in metrics:
        lines += [
            f"With flip TTA (not inside `model.onnx`): val accuracy {_f(metrics['val_tta_accuracy'])}, "
            f"macro-F1 {_f(metrics.get('val_tta_macro_f1'))}.",
            "",
        ]
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    per = _per_dataset(state, metrics)
    if per:
        rows = [[n, sp, *(_f(v.get(k)) for k in keys)] for n, by in per.items() for sp, v in by.items()]
        lines += [
            "### Per training dataset",
            "",
            *_table(["dataset", "split", "accuracy", "balanced accuracy", "macro-F1"], rows),
            "",
        ]
    other = (metrics or {}).get("eval_data")
    if other:
        rows = [[n, v["split"], v["images"], *(_f(v[k]) for k in keys)] for n, v in other.items()]
        lines += [
            "### Other datasets (not trained on)",
            "",
            *_table(["dataset", "split", "images", "accuracy", "balanced accuracy", "macro-F1"], rows),
            "",
        ]
    else:
        lines += [
            "Other datasets: not evaluated (a sweep's `eval_data` scores the model on data it never saw).",
            "",
        ]
    return lines[:-1]


def _calibration_lines(metrics: dict | None, t: float) -> list[str]:
    cal = (metrics or {}).get("calibration")
    if not cal or "before" not in cal:
        return [
            "## Calibration",
            "",
            f"Not known: the expected calibration error was not measured (a sweep report "
            f"measures it). The checkpoint's temperature is {t:.4g}.",
        ]
    b, a = cal["before"], cal["after"]
    return [
        "## Calibration",
        "",
        f"Temperature scaling, T = {cal.get('temperature', t):.4g}, fitted on {cal.get('fitted_on', '?')}; "
        f"expected calibration error ({cal.get('bins', '?')} bins) and NLL on {cal.get('split', '?')}:",
        "",
        *_table(
            ["", "ECE", "NLL"],
            [
                ["before (T = 1)", _f(b.get("ece")), _f(b.get("nll"))],
                [f"after (T = {cal.get('temperature', t):.4g})", _f(a.get("ece")), _f(a.get("nll"))],
            ],
        ),
    ]


def _latency_lines(latency: dict | None, int8: dict | None) -> list[str]:
    lines = ["## Latency", ""]
    latency = latency or (int8 or {}).get("latency", {}).get("fp32")
    if not latency:
        return lines + [
            "Not measured: run `python -m fer_core.apps.export CHECKPOINT --int8` (FP32 and INT8 "
            'timed on this CPU), or `fer_core.apps.latency.measure_latency("model.onnx")`.'
        ]
    big = max(latency["batches"], key=int) if latency.get("batches") else "?"
    q1, q3 = latency["latency_iqr_ms"]
    lines.append(
        f"onnxruntime on {latency['machine']}, {latency['threads']} threads: batch 1 {latency['latency_ms']:.2f} ms "
        f"median (interquartile range {q1:.2f}-{q3:.2f} ms); batch {big}: {latency['images_per_s']:.0f} images/s."
    )
    if not int8:
        return lines + ["", "INT8: not measured (`python -m fer_core.apps.export CHECKPOINT --int8`)."]
    lat, size = int8["latency"], int8["size_bytes"]
    rows = [
        [f"{sp} {k}", _f(s["fp32"][k]), _f(s["int8"][k])]
        for sp, s in int8["splits"].items()
        for k in ("accuracy", "ece")
    ]
    rows += [
        ["batch-1 latency, ms", f"{lat['fp32']['latency_ms']:.2f}", f"{lat['int8']['latency_ms']:.2f}"],
        ["throughput, images/s", f"{lat['fp32']['images_per_s']:.0f}", f"{lat['int8']['images_per_s']:.0f}"],
        ["file, MB", f"{size['fp32'] / 1e6:.2f}", f"{size['int8'] / 1e6:.2f}"],
    ]
    how = (int8.get("quantization") or {}).get("how", "unknown")
    lines += [
        "",
        f"INT8 (`{Path(str(int8.get('int8', 'model.int8.onnx'))).name}`, onnxruntime quantization: {how}) beside "
        f"FP32, {lat['int8']['threads']} threads:",
        "",
        *_table(["", "FP32", "INT8"], rows),
    ]
    return lines + (["", f"Warning: {int8['warning']}"] if int8.get("warning") else [])


def _limitation_lines(state: dict, audit: dict | None, pre: Preprocess, names: list[str]) -> list[str]:
    c = state["config"]
    lines = ["## Limitations and biases", ""]
    for n in names:
        key = n.lower().replace("-", "").replace("_", "").replace("+", "plus")
        note = next((v for k, v in KNOWN_DATA.items() if key.startswith(k)), None)
        if note:
            lines.append(f"- {note}.")
    counts = (audit or {}).get("splits", {}).get("train", {}).get("class_counts")
    if counts:
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        ratio = counts[big] / max(counts[small], 1)
        lines.append(
            f"- Class imbalance: train holds {counts[big]} {big} images against {counts[small]} {small} "
            f"({ratio:.1f}x); rare classes are recognised less reliably."
            if ratio >= 1.5
            else f"- Classes: train holds {counts[small]} to {counts[big]} images of each."
        )
    else:
        lines.append("- Class balance of the training data: not known (no audit was given).")
    if audit:
        found = [line for line in summarize(audit) if not line.startswith("audit took")]
        lines += ["- The data audit found:", *(f"  - {line}" for line in found)]
        cross = audit.get("exact_duplicates", {}).get("cross_split", {})
        if cross.get("images") and c.get("dedupe", "none") != "cross_split":
            lines.append(
                f"  - {cross['images']} images are exact copies across splits and training kept them "
                "(`dedupe` was not `cross_split`): the val/test figures are slightly optimistic."
            )
    else:
        lines.append(
            "- Duplicates across splits, blank images and split mismatch: not known (no audit was given)."
        )
    seen = "gray" if pre.grayscale else "colour"
    lines += [
        f"- Never seen: it was trained on {seen} faces of {pre.img_size} px"
        + (" (colour photos are converted to gray, so colour cues are lost)" if pre.grayscale else "")
        + "; faces at other resolutions are resized to that size, and profiles, occlusions, low light, "
        "infrared or video compression are not measured.",
        "- The data has no age, gender or ethnicity labels: how the model performs across them is not measured.",
        "- A facial expression is not an emotion: people show the same feeling with different faces and put on "
        "faces they do not feel; these labels are what annotators read from a still photo.",
        "- Not for decisions about people with real consequences (hiring, education, policing, health, credit, "
        "border control), nor to infer emotions at work or in school, which some jurisdictions restrict by law.",
    ]
    return lines


def _usage_lines(pre: Preprocess, t: float) -> list[str]:
    s = pre.img_size
    mode, shape = ("L", f"1 x {s} x {s}") if pre.grayscale else ("RGB", f"1 x {s} x {s} x 3")
    norm = (
        "each image standardised by its own mean and std"
        if pre.per_image
        else f"(x/255 - mean)/std with mean {list(pre.mean)}, std {list(pre.std)}"
    )
    return [
        "## How to use",
        "",
        "With onnxruntime (no PyTorch; `model.onnx` takes a face crop as uint8 pixels):",
        "",
        "```python",
        "import json",
        "",
        "import numpy as np",
        "import onnxruntime as ort",
        "from PIL import Image",
        "",
        'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
        'classes = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])',
        f'face = Image.open("face.jpg").convert("{mode}").resize(({s}, {s}), Image.BICUBIC)',
        f"x = np.asarray(face, dtype=np.uint8)[None]  # {shape}",
        f'probabilities = session.run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": x}})[0][0]',
        "print(classes[int(probabilities.argmax())], float(probabilities.max()))",
        "```",
        "",
        "With fer_core (finds the faces in photos first):",
        "",
        "```python",
        "from fer_core.apps.predict import load_predictor",
        "",
        'predictor = load_predictor("model.onnx")  # or a fer_core checkpoint: Predictor.from_checkpoint("best.pt")',
        'probabilities = predictor.predict(["face.jpg"])  # N x C, in predictor.class_names order',
        'for result in predictor.predict_files(["photo.jpg"]):',
        "    for face in result.faces:",
        "        print(result.path, face.box, face.label(predictor.class_names), face.score)",
        "```",
        "",
        "From the command line: `python sweeps/predict.py model.onnx photo.jpg` (or a checkpoint in place of "
        "`model.onnx`).",
        "",
        'With timm (logits out): `timm.create_model("hf-hub:USER/REPO", pretrained=True)`, or '
        '`timm.create_model(config["architecture"], num_classes=config["num_classes"])` with `model.safetensors` '
        f"loaded; feed float 3 x {s} x {s} images normalised as {norm}"
        + (" (the gray channel repeated to 3)" if pre.grayscale else "")
        + f", and take softmax(logits / {t:.4g}) for the calibrated probabilities"
        + (
            ": timm's own transforms do not standardise per image, so use `config.json`'s `fer_core.preprocess`."
            if pre.per_image
            else "."
        ),
    ]


def model_card(
    state: dict,
    *,
    metrics: dict | None = None,
    audit: dict | None = None,
    latency: dict | None = None,
    int8: dict | None = None,
    choice: str = "",
) -> str:
    """The Hugging Face Hub model card (README.md) of a checkpoint.

    Args:
        state: a checkpoint dict (``fer_core.checkpoint.load_checkpoint``).
        metrics: a sweep report's metrics.json (None: the checkpoint's last history row, val only).
        audit: the data audit's findings (``fer_core.audit.audit_dataset``, audit.json).
        latency: ``fer_core.apps.latency.measure_latency``'s dict of ``model.onnx``.
        int8: ``fer_core.apps.int8.int8_report``'s dict (its FP32 latency stands in for ``latency``).
        choice: one sentence on why this model was chosen.

    Returns:
        Markdown with a YAML metadata header.
    """
    classes = list(state["class_names"])
    pre = Preprocess.from_dict(state["preprocess"])
    t = temperature_of(state, "the checkpoint")
    names = dataset_names(state)
    title = f"{state['config']['model']} facial expression classifier ({', '.join(names) or 'own data'})"
    sections = [
        [
            f"# {title}",
            "",
            f"Classifies a cropped face into {len(classes)} expressions ({', '.join(classes)}). Trained with fer_core; "
            "the license is yours to set: the header says `license: other` until you choose one that the training "
            "data's and the base weights' terms allow.",
        ],
        _model_lines(state, metrics, pre, classes, t),
        _data_lines(state, audit, names, classes),
        _choice_lines(state, metrics, choice),
        _evaluation_lines(state, metrics, audit, classes),
        _calibration_lines(metrics, t),
        _latency_lines(latency, int8),
        [
            "## Intended use",
            "",
            f"Recognising the facial expressions {', '.join(classes)} in face crops, for research, "
            "demonstrations, aggregate analysis (e.g. audience reactions in consenting studies) and human-computer "
            "interaction prototypes, where a wrong label costs little and a person can check it.",
        ],
        _limitation_lines(state, audit, pre, names),
        _usage_lines(pre, t),
    ]
    return _header(state, metrics, names) + "\n" + "\n\n".join("\n".join(s) for s in sections) + "\n"
