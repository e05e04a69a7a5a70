"""The ONNX predictor: the checkpoint's probabilities from the exported file, its classes and preprocessing
read from the file's metadata, and one-line refusals of files it cannot use."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fer_core.apps.export import export_onnx
from fer_core.apps.predict import OnnxPredictor, Predictor, load_predictor
from fer_core.data import CLASS_NAMES
from fer_core.errors import FerError

from .test_export import checkpoint  # noqa: F401  (the tiny trained checkpoint, gray and RGB)
from .test_predict import SCENE_FACES, drawn_face, scene


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):  # noqa: F811
    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_same_probabilities_as_the_checkpoint(checkpoint, exported, demo_root, tmp_path):  # noqa: F811
    torch_pred = load_predictor(checkpoint, device="cpu")
    onnx_pred = load_predictor(exported, batch_size=3)  # several inference calls for 8 crops
    assert type(torch_pred) is Predictor and isinstance(onnx_pred, OnnxPredictor)
    assert onnx_pred.class_names == torch_pred.class_names == list(CLASS_NAMES)
    assert onnx_pred.preprocess == torch_pred.preprocess and onnx_pred.temperature == 1.0

    crops = sorted((demo_root / "val").glob("*/*"))[::3][:8]
    p_torch, p_onnx = torch_pred.predict(crops), onnx_pred.predict(crops)
    assert p_onnx.shape == (8, 7) and p_onnx.dtype == np.float32
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    assert np.ptp(p_torch, axis=0).max() > 0.05  # the outputs vary with the input: agreeing means something

    # Photos: faces found by the named detector, cropped and classified the same way.
    photo = tmp_path / "scene.png"
    scene([(drawn_face(s), x, y) for x, y, s in SCENE_FACES]).save(photo)
    for name in ("haar", "dlib"):
        a = next(load_predictor(checkpoint, device="cpu", detector=name).predict_files([photo]))
        b = next(load_predictor(exported, detector=name).predict_files([photo]))
        assert len(a.faces) == len(b.faces) == 2
        for fa, fb in zip(a.faces, b.faces):
            assert fa.box == fb.box and fa.region == fb.region
            np.testing.assert_allclose(fb.probs, fa.probs, atol=1e-4)

    with pytest.raises(FerError, match=r"saliency needs the checkpoint \(\.pt\), not the ONNX model"):
        next(onnx_pred.predict_files([photo], explain=True))


def test_classes_come_from_the_file(exported, tmp_path):
    proto = onnx.load(str(exported))
    for p in proto.metadata_props:
        if p.key == "class_names":
            p.value = '["a", "b", "c", "d", "e", "f", "g"]'
    onnx.save(proto, str(tmp_path / "renamed.onnx"))
    assert OnnxPredictor.from_onnx(tmp_path / "renamed.onnx").class_names == list("abcdefg")


def _one_line(excinfo, *words):
    text = str(excinfo.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_files_it_cannot_use(tmp_path):
    plain = tmp_path / "identity.onnx"  # a valid ONNX model that fer_core did not write
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["probabilities"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 7])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 7])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(FerError) as e:
        load_predictor(plain)
    _one_line(e, str(plain), "not a fer_core export", "python -m fer_core.apps.export")

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(FerError) as e:
        load_predictor(garbage)
    _one_line(e, str(garbage), "not a readable ONNX model")

    with pytest.raises(FerError) as e:
        load_predictor(tmp_path / "missing.onnx")
    _one_line(e, "missing.onnx", "no such ONNX file")

    with pytest.raises(FerError) as e:
        load_predictor(plain, detector="yunet")
    _one_line(e, "'yunet' is unknown", "haar, dlib")
