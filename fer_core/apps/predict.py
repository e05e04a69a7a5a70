"""Prediction: images or photos in, the probabilities of the checkpoint's own classes (and charts) out.

Two layers:

- ``Predictor.from_checkpoint(path).predict(images)``: face crops (paths, PIL images or uint8 arrays) in,
  an N×C probability array out (C: the classes the checkpoint was trained on, in its ``class_names``
  order), batched. Each image goes through the checkpoint's stored preprocessing
  contract (size, grayscale, normalisation): a path is decoded by ``fer_core.data.decode_image``, the very
  function that built the training and validation caches, and an in-memory image by ``data.to_model_array``,
  which repeats its conversions.
- ``Predictor.predict_files(paths)``: photos in, one ``ImageResult`` per file: the file is loaded robustly
  (any mode, EXIF orientation, very large images reduced), faces are found (``fer_core.apps.faces``), each is
  cropped with a margin and classified; with no face found the whole image is classified and the result
  says so. A file that cannot be read becomes a result with ``error`` set, never an exception, so one bad
  file does not stop a folder. The face detector is chosen by name (``detector="haar"`` or ``"dlib"``).
- ``OnnxPredictor.from_onnx(path)``: the same API over a model exported by ``fer_core.apps.export``, run by
  onnxruntime on the CPU, its classes and preprocessing read from the file. ``load_predictor(path)`` picks
  one of the two by the file's suffix.

This module is the inference: the ``Predictor`` and the results it yields. Expanding inputs and loading
photos are in ``predict_inputs``; the per-image PNG (photo with boxes beside the probability bars) and a
folder's overview are drawn by ``predict_plots``. The command line is ``predict_cli`` (run as
``python sweeps/predict.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..calibration import tempered_softmax
from ..checkpoint import load_model, temperature_of
from ..data import decode_image, to_model_array
from ..errors import DataError, FerError
from ..preprocess import Preprocess
from ..runtime import Runtime, resolve_runtime
from ..saliency import class_activation_maps
from .faces import Box, DlibDetector, FaceDetector, crop_face, detector_name, make_detector, margin_box
from .predict_inputs import array_to_image, load_image

# The label of a face whose top probability is under the caller's minimum confidence (``predict_files``).
UNCERTAIN = "uncertain"
# The copy kept for the per-image PNG (and, smaller, for the contact sheet).
DISPLAY_SIDE = 1024
THUMB_SIDE = 256


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FacePrediction:
    """One classified region: ``box`` (x, y, w, h) in the upright original's pixels, None for the whole image;
    ``uncertain`` when its top probability is under the minimum confidence asked for; with ``explain``,
    ``saliency`` is the top class's map over the model input, which shows ``region`` (the margin crop, in the
    same pixels; None: the whole image)."""

    box: Box | None
    probs: np.ndarray
    uncertain: bool = False
    region: Box | None = None
    saliency: np.ndarray | None = None

    def label(self, class_names: Sequence[str]) -> str:
        """The class shown and written for this face: its top class, or ``UNCERTAIN``."""
        return UNCERTAIN if self.uncertain else class_names[self.index]

    @property
    def index(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def score(self) -> float:
        return float(np.max(self.probs))


@dataclass
class ImageResult:
    """The prediction for one file.

    ``faces`` holds one entry per face found, or a single whole-image entry (box None) when detection was
    off or found nothing. ``image`` is an RGB copy at most ``DISPLAY_SIDE`` px for plotting and
    ``thumbnail`` one of ``THUMB_SIDE`` px; both are scaled copies of the original of ``size`` (w, h).
    """

    path: str
    size: tuple[int, int] | None = None
    faces: list[FacePrediction] = field(default_factory=list)
    detected: bool = False
    error: str | None = None
    image: np.ndarray | None = None
    thumbnail: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def face_found(self) -> bool:
        return any(f.box is not None for f in self.faces)

    @property
    def note(self) -> str:
        if self.error:
            return self.error
        if not self.detected:
            return "face detection off: whole image classified"
        return (
            f"{len(self.faces)} face(s) found" if self.face_found else "no face found: whole image classified"
        )

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready: path, size, faces (box, expression, probability, all probabilities), note, error.

        Args:
            class_names: the predictor's ``class_names``, which name the expression and the probabilities.
        """
        return {
            "path": self.path,
            "ok": self.ok,
            "size": list(self.size) if self.size else None,
            "face_found": self.face_found,
            "note": self.note,
            "error": self.error,
            "faces": [
                {
                    "box": list(f.box) if f.box else None,
                    "expression": f.label(class_names),
                    "probability": round(f.score, 6),
                    "probabilities": {c: round(float(v), 6) for c, v in zip(class_names, f.probs)},
                }
                for f in self.faces
            ],
        }


# ---------------------------------------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------------------------------------


class Predictor:
    """A trained checkpoint ready to classify face crops and photos.

    Args:
        model: the network in eval mode on ``runtime.device``.
        preprocess: the checkpoint's preprocessing contract.
        class_names: class names in output order.
        runtime: device and precision.
        batch_size: images per forward pass.
        checkpoint: where the model came from (for messages).
        temperature: the checkpoint's softmax temperature (``fer_core.calibration``).
        detector: the face detector's name, one of ``fer_core.apps.faces.DETECTORS``.

    Raises:
        FerError: an unknown detector name.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str],
        runtime: Runtime,
        batch_size: int = 64,
        checkpoint: str | None = None,
        temperature: float = 1.0,
        detector: str = "haar",
    ):
        self.model, self.preprocess, self.runtime = model, preprocess, runtime
        self.detector_name = detector_name(detector)
        self.temperature = temperature
        self.class_names, self.batch_size, self.checkpoint = (
            list(class_names),
            max(1, int(batch_size)),
            checkpoint,
        )
        self._detector: FaceDetector | DlibDetector | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        batch_size: int = 64,
        detector: str = "haar",
    ) -> Predictor:
        """Rebuild the model and preprocessing a fer_core checkpoint was trained with.

        Args:
            path: best.pt / last.pt written by fer_core.
            device: auto, cpu, cuda or cuda:N.
            batch_size: images per forward pass.
            detector: the face detector's name, one of ``fer_core.apps.faces.DETECTORS``.

        Raises:
            CheckpointError: not a fer_core checkpoint, or weights that do not fit its model.
            ConfigError: an unknown or unavailable device.
            FerError: an unknown detector name.
        """
        detector_name(detector)  # before the (slow) model load
        runtime = resolve_runtime(device)
        model, pre, classes, state = load_model(path, runtime)
        return cls(model, pre, classes, runtime, batch_size, str(path), temperature_of(state, path), detector)

    @property
    def detector(self) -> FaceDetector | DlibDetector:
        """The face detector named at construction, built on first use."""
        if self._detector is None:
            self._detector = make_detector(self.detector_name)
        return self._detector

    # -- crops -> probabilities -----------------------------------------------------------------------------

    def prepare(self, image) -> np.ndarray:
        """One image (path, PIL image or numpy array) -> the uint8 model input.

        Raises:
            DataError: unreadable file or unusable array.
        """
        s, gray = self.preprocess.img_size, self.preprocess.grayscale
        if isinstance(image, (str, os.PathLike)):
            try:
                return decode_image(image, s, gray)  # exactly training's decoder
            except (OSError, ValueError, SyntaxError) as e:
                load_image(image)  # raises the one-line reason for the usual failures
                raise DataError(
                    f"{image}: cannot decode the image ({e}); re-export or replace the file"
                ) from None
        if isinstance(image, Image.Image):
            return to_model_array(image, s, gray)
        return to_model_array(array_to_image(image), s, gray)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Prepared uint8 inputs (N×S×S or N×S×S×3) -> N×C float32 probabilities, ``batch_size`` at a time."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                x = self.preprocess(
                    torch.from_numpy(np.ascontiguousarray(batch[start : start + self.batch_size])),
                    self.runtime,
                )
                with self.runtime.autocast():
                    logits = self.model(x).float()
                out.append(tempered_softmax(logits, self.temperature).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images) -> np.ndarray:
        """Classify face crops.

        Args:
            images: one image or a sequence of them; each a path, a PIL image or a numpy array (H×W, H×W×3,
                H×W×4; any size, resized like training). An N×H×W or N×H×W×3 uint8 array is a batch.

        Returns:
            N×C float32 probabilities, rows in input order, columns in ``class_names`` order.

        Raises:
            DataError: an image cannot be read (use ``predict_files`` to collect per-file errors instead).
        """
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        elif isinstance(images, np.ndarray) and (
            images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (3, 4))
        ):
            images = [images]  # one H×W or H×W×C image, not a batch
        elif not isinstance(images, np.ndarray):
            images = list(images)
        return self.predict_batch(
            np.stack([self.prepare(im) for im in images]) if len(images) else np.zeros((0,))
        )

    # -- photos -> results ----------------------------------------------------------------------------------

    def _load_file(self, path, detect: bool, margin: float) -> tuple[ImageResult, list[np.ndarray]]:
        """Load, detect and crop one file: (result without probabilities, model inputs)."""
        result = ImageResult(str(path), detected=detect)
        try:
            im, result.size, _ = load_image(path)
        except DataError as e:
            result.error = str(e)
            return result, []
        rgb = np.asarray(im)
        scale = result.size[0] / rgb.shape[1]  # loaded pixels -> original pixels
        boxes = self.detector(rgb) if detect else []
        s, gray = self.preprocess.img_size, self.preprocess.grayscale
        if boxes:
            inputs = [to_model_array(Image.fromarray(crop_face(rgb, b, margin)), s, gray) for b in boxes]
            result.faces = [
                FacePrediction(
                    _scaled(b, scale), None, region=_scaled(margin_box(b, rgb.shape, margin), scale)
                )
                for b in boxes
            ]
        else:
            # No crop: the file itself is the input, decoded as training decodes it.
            try:
                inputs = [self.prepare(path)]
            except DataError as e:
                result.error = str(e)
                return result, []
            result.faces = [FacePrediction(None, None)]
        disp = im.copy()
        disp.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.BICUBIC)
        result.image = np.asarray(disp)
        disp.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BICUBIC)
        result.thumbnail = np.asarray(disp)
        return result, inputs

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        detect: bool = True,
        margin: float = 0.1,
        chunk: int | None = None,
        min_confidence: float = 0.0,
        explain: bool = False,
    ) -> Iterator[ImageResult]:
        """Classify every face in every file; yields one ``ImageResult`` per path, in order.

        Files are read ``chunk`` at a time and all their faces classified in shared batches of ``batch_size``. A file that
        cannot be read yields a result whose ``error`` names it and the reason; the rest go on.

        Args:
            paths: image files.
            detect: find faces (False: each file is already a face crop).
            margin: fraction of a face box added on each side before cropping.
            chunk: files held in memory at once (default ``batch_size``: one full forward pass of crops).
            min_confidence: a face whose top probability is under this is marked ``uncertain``.
            explain: also give each face the class activation map of its top class (``fer_core.saliency``).
        """
        paths, chunk = list(paths), max(1, chunk or self.batch_size)
        for start in range(0, len(paths), chunk):
            loaded = [self._load_file(p, detect, margin) for p in paths[start : start + chunk]]
            inputs = [x for _, xs in loaded for x in xs]
            probs = self.predict_batch(np.stack(inputs)) if inputs else np.zeros((0, len(self.class_names)))
            maps = iter(self.explain(np.stack(inputs), probs.argmax(1)) if explain and inputs else [])
            rows = iter(probs)
            for result, _xs in loaded:
                for face in result.faces:
                    face.probs = next(rows)
                    face.uncertain = face.score < min_confidence
                    face.saliency = next(maps, None)
                yield result

    def explain(self, batch: np.ndarray, targets) -> np.ndarray:
        """Prepared uint8 inputs -> N×S×S class activation maps of ``targets`` in [0, 1] (``fer_core.saliency``)."""
        return class_activation_maps(
            self.model, self.preprocess, batch, targets, self.runtime, self.batch_size
        )

    def predict_file(
        self, path: str | os.PathLike, detect: bool = True, margin: float = 0.1, explain: bool = False
    ) -> ImageResult:
        """``predict_files`` for one file."""
        return next(self.predict_files([path], detect, margin, explain=explain))


class OnnxPredictor(Predictor):
    """A model exported by ``fer_core.apps.export``, run by onnxruntime on the CPU, with ``Predictor``'s API.

    Classes, preprocessing contract and temperature are read from the file's metadata (the graph itself
    normalises and applies the tempered softmax), so crops are prepared exactly as for the checkpoint and the
    probabilities agree with it. Saliency needs the network's layers: ``explain`` asks for the checkpoint.

    Args:
        session: an ``onnxruntime.InferenceSession`` of the exported file.
        preprocess: the contract stored in the file.
        class_names: the classes stored in the file, in output order.
        batch_size: images per ``session.run``.
        checkpoint: the ONNX file (for messages).
        temperature: the temperature stored in the file (already inside the graph).
        detector: the face detector's name, one of ``fer_core.apps.faces.DETECTORS``.
    """

    def __init__(
        self,
        session,
        preprocess: Preprocess,
        class_names: Sequence[str],
        batch_size: int = 64,
        checkpoint: str | None = None,
        temperature: float = 1.0,
        detector: str = "haar",
    ):
        super().__init__(None, preprocess, class_names, None, batch_size, checkpoint, temperature, detector)
        self.session = session

    @classmethod
    def from_onnx(
        cls, path: str | os.PathLike, batch_size: int = 64, detector: str = "haar"
    ) -> OnnxPredictor:
        """Load an ONNX file written by ``python -m fer_core.apps.export``.

        Args:
            path: the .onnx file.
            batch_size: images per inference call.
            detector: the face detector's name, one of ``fer_core.apps.faces.DETECTORS``.

        Raises:
            FerError: the file is missing or not ONNX, is not a fer_core export (no class names in its
                metadata), or its input does not match its stored contract; an unknown detector name.
        """
        from .export import INPUT_NAME, OUTPUT_NAME, _need

        detector_name(detector)
        ort = _need("onnxruntime")
        if not os.path.isfile(path):
            raise FerError(
                f"{path}: no such ONNX file; export one with python -m fer_core.apps.export CHECKPOINT"
            )
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FerError(f"{path}: not a readable ONNX model ({first}); export it again") from None
        meta = session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta:
            raise FerError(
                f"{path}: not a fer_core export (no 'class_names' in its metadata); export a checkpoint with "
                "python -m fer_core.apps.export CHECKPOINT --onnx OUT.onnx"
            )
        try:
            classes = json.loads(meta["class_names"])
            pre = Preprocess.from_dict(json.loads(meta["preprocess"]))
            temperature = float(json.loads(meta["temperature"]))
        except (KeyError, ValueError, TypeError) as e:
            raise FerError(
                f"{path}: its fer_core metadata is incomplete or unreadable ({type(e).__name__}: {e}); "
                "export the checkpoint again with python -m fer_core.apps.export"
            ) from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = [pre.img_size, pre.img_size] + ([] if pre.grayscale else [3])
        if (
            [i.name for i in inputs] != [INPUT_NAME]
            or OUTPUT_NAME not in [o.name for o in outputs]
            or inputs[0].type != "tensor(uint8)"
            or list(inputs[0].shape[1:]) != shape
        ):
            raise FerError(
                f"{path}: its input is not the uint8 '{INPUT_NAME}' of shape N x {' x '.join(map(str, shape))} "
                "that its metadata describes; export the checkpoint again with python -m fer_core.apps.export"
            )
        return cls(session, pre, classes, batch_size, str(path), temperature, detector)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Prepared uint8 inputs (N×S×S or N×S×S×3) -> N×C float32 probabilities, ``batch_size`` at a time."""
        from .export import INPUT_NAME, OUTPUT_NAME

        out = [
            self.session.run(
                [OUTPUT_NAME],
                {INPUT_NAME: np.ascontiguousarray(batch[start : start + self.batch_size], dtype=np.uint8)},
            )[0]
            for start in range(0, len(batch), self.batch_size)
        ]
        return (
            np.concatenate(out).astype(np.float32, copy=False)
            if out
            else np.zeros((0, len(self.class_names)), np.float32)
        )

    def explain(self, batch: np.ndarray, targets) -> np.ndarray:
        """Not available from ONNX.

        Raises:
            FerError: always.
        """
        raise FerError(
            f"{self.checkpoint}: saliency needs the checkpoint (.pt), not the ONNX model; "
            "load the checkpoint it was exported from"
        )


def load_predictor(
    path: str | os.PathLike, device: str = "auto", batch_size: int = 64, detector: str = "haar"
) -> Predictor:
    """A predictor for a checkpoint or an exported model, chosen by suffix.

    Args:
        path: a ``.onnx`` file (``OnnxPredictor``, onnxruntime on the CPU) or a fer_core checkpoint
            (``Predictor.from_checkpoint``).
        device: the checkpoint's device (auto, cpu, cuda or cuda:N); an ONNX model runs on the CPU.
        batch_size: images per forward pass.
        detector: the face detector's name, one of ``fer_core.apps.faces.DETECTORS``.

    Raises:
        FerError: see ``OnnxPredictor.from_onnx`` and ``Predictor.from_checkpoint``.
    """
    if str(path).lower().endswith(".onnx"):
        return OnnxPredictor.from_onnx(path, batch_size, detector)
    return Predictor.from_checkpoint(path, device, batch_size, detector)


def _scaled(box: Box, scale: float) -> Box:
    """A box in loaded pixels -> the original's pixels."""
    return tuple(int(round(v * scale)) for v in box)
