"""The Hugging Face Hub folder of a checkpoint, written locally and never uploaded.

``write_hub_folder(checkpoint, out_dir)`` fills ``out_dir`` with what a Hub model repository holds:

- ``model.onnx``: ``fer_core.apps.export.export_onnx`` (uint8 pixels in, probabilities out), or a copy of
  a file already exported;
- ``model.safetensors`` and ``config.json``: the deployed weights (the EMA weights when the run kept them,
  as ``fer_core.checkpoint.load_model`` deploys) written by timm's own ``timm.models.save_for_hf``, so
  ``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` (or ``"local-dir:DIR"``) loads them; its
  ``pretrained_cfg`` carries the input size, mean, std and bicubic resize of the checkpoint's contract,
  ``label_names`` the classes in output order, and a ``fer_core`` entry the whole contract (``preprocess``,
  ``temperature``, ``input_contract``) that timm's keys cannot say (per-image standardisation, gray input);
- ``README.md``: the model card (``fer_core.apps.model_card``): the one given, else the ``model_card.md``
  beside the checkpoint (a sweep's report folder), else one made from the checkpoint and the
  ``metrics.json`` and ``audit.json`` beside it.

Uploading is left to the user (``huggingface-cli upload USER/REPO DIR``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import __version__
from ..checkpoint import load_checkpoint, load_model, temperature_of
from ..errors import FerError
from ..outputs import check_output_folder
from ..runtime import resolve_runtime
from .export import export_onnx, input_contract
from .model_card import model_card

UPLOAD_HINT = (
    "huggingface-cli upload USER/REPO {dir} (or huggingface_hub.upload_folder(repo_id=..., folder_path=...))"
)


def _json_beside(checkpoint: Path, name: str) -> dict | None:
    path = checkpoint.parent / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise FerError(
            f"{path}: not readable JSON; remove it or write it again, so the card can use it"
        ) from None


def hub_card(checkpoint: str | Path, **inputs) -> str:
    """The card of a checkpoint's Hub folder: ``model_card.md`` beside it (a sweep report's, written with
    everything that report knew) if there is one, else ``model_card(state, metrics=metrics.json beside it,
    audit=audit.json beside it, **inputs)``.

    Args:
        checkpoint: a fer_core checkpoint.
        inputs: more of ``model_card``'s inputs (``latency``, ``int8``, ``choice``).
    """
    checkpoint = Path(checkpoint)
    written = checkpoint.parent / "model_card.md"
    if written.is_file():
        return written.read_text()
    return model_card(
        load_checkpoint(checkpoint),
        **{
            "metrics": _json_beside(checkpoint, "metrics.json"),
            "audit": _json_beside(checkpoint, "audit.json"),
            **inputs,
        },
    )


def check_hub_folder(out_dir: str | Path, checkpoint: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before anything is written, a folder that is a file, lies inside a dataset, or holds files
    already (unless ``overwrite``)."""
    out_dir = check_output_folder(out_dir, holds="the Hub files", what="--hub", inputs=[checkpoint])
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise FerError(
            f"--hub {out_dir}: is not empty; give a new or empty folder, or pass --overwrite to replace its files"
        )
    return out_dir


def write_hub_folder(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    card: str | None = None,
    onnx: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hub folder of a checkpoint (see the module's docstring); nothing is uploaded.

    Args:
        checkpoint: a fer_core checkpoint.
        out_dir: the folder to fill (created).
        card: README.md's text (default: ``hub_card(checkpoint)``).
        onnx: an ONNX file exported from this checkpoint, copied instead of exported again.
        overwrite: replace the files of a folder that is not empty.

    Returns:
        ``out_dir``.

    Raises:
        FerError: a bad checkpoint, an ``onnx`` that is not a file, or a refused folder (one line, before
            anything is written).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    out_dir = check_hub_folder(out_dir, checkpoint, overwrite)
    if onnx is not None and not Path(onnx).is_file():
        raise FerError(f"{onnx}: no such ONNX file; export it first, or leave it out to export one")
    model, pre, classes, state = load_model(checkpoint, resolve_runtime("cpu", channels_last="off"))
    temperature = temperature_of(state, checkpoint)
    card = hub_card(checkpoint) if card is None else card
    try:
        _write(checkpoint, out_dir, model, pre, classes, temperature, card, onnx)
    except OSError as e:
        raise FerError(
            f"--hub {out_dir}: cannot write there ({e.strerror or e}); give a writable folder"
        ) from None
    return out_dir


def _write(checkpoint: Path, out_dir: Path, model, pre, classes, temperature: float, card: str, onnx) -> None:
    from timm.models import save_for_hf

    out_dir.mkdir(parents=True, exist_ok=True)
    if onnx is None:
        export_onnx(checkpoint, out_dir / "model.onnx")
    elif Path(onnx).resolve() != (out_dir / "model.onnx").resolve():
        shutil.copyfile(onnx, out_dir / "model.onnx")
    save_for_hf(
        model,
        str(out_dir),
        model_config={
            "label_names": classes,
            # The source weights' tag and licence describe ImageNet weights, not these.
            "pretrained_cfg": {"tag": "fer_core", "license": "other"},
            "fer_core": {
                "preprocess": pre.to_dict(),
                "temperature": temperature,
                "class_names": classes,
                "input_contract": input_contract(pre, classes, temperature),
                "fer_core_version": __version__,
            },
        },
        safe_serialization=True,
        data_config={
            "input_size": (3, pre.img_size, pre.img_size),
            "mean": tuple(pre.mean),
            "std": tuple(pre.std),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
        },
    )
    (out_dir / "README.md").write_text(card)


def describe_hub_folder(out_dir: str | Path) -> str:
    """What the folder holds, that nothing was uploaded, and how to upload it (two lines)."""
    out_dir = Path(out_dir)
    files = ", ".join(
        f"{f.name} ({f.stat().st_size / 1e6:.2f} MB)" for f in sorted(out_dir.iterdir()) if f.is_file()
    )
    return f"wrote the Hub folder {out_dir}: {files}\nnothing was uploaded; to publish it: {UPLOAD_HINT.format(dir=out_dir)}"
