"""Model creation and local weights files: a file the test writes, the shared Lite0 file, and bad files."""

import pytest
import torch
from safetensors.torch import save_file

from fer_core.errors import CheckpointError, ConfigError
from fer_core.model import build_model, normalization

from .conftest import LITE0


def test_seven_class_b0():
    m = build_model("efficientnet_b0", 7)
    assert m.get_classifier().out_features == 7
    assert normalization(m)[0] == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "pt-wrapped"])
def test_local_weights_drop_a_differently_shaped_classifier(tmp_path, fmt):
    src = build_model("efficientnet_b0", 1000)  # an "ImageNet" model with a 1000-way head
    sd = src.state_dict()
    path = tmp_path / f"w.{fmt.split('-')[0]}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd} if fmt == "pt-wrapped" else sd, path)
    m = build_model("efficientnet_b0", 7, weights=path)
    assert torch.equal(m.conv_stem.weight, sd["conv_stem.weight"])
    assert torch.equal(m.blocks[3][0].conv_pw.weight, sd["blocks.3.0.conv_pw.weight"])
    assert m.classifier.weight.shape == (7, 1280)


def test_same_shaped_classifier_is_loaded(tmp_path):
    src = build_model("efficientnet_b0", 7)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = build_model("efficientnet_b0", 7, weights=tmp_path / "w.pt")
    assert torch.equal(m.classifier.weight, src.classifier.weight)


def test_mismatched_keys_error(tmp_path):
    torch.save(build_model("resnet18", 7).state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError) as e:
        build_model("efficientnet_b0", 7, weights=tmp_path / "resnet.pt")
    msg = str(e.value)
    assert (
        "resnet.pt: weights do not match model" in msg
        and "missing" in msg
        and "set 'model'" in msg
        and "\n" not in msg
    )


def test_unreadable_and_missing_weights(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable weights file"):
        build_model("efficientnet_b0", 7, weights=junk)
    with pytest.raises(CheckpointError, match="weights file not found"):
        build_model("efficientnet_b0", 7, weights=tmp_path / "none.safetensors")


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="'efficientnet_b9000' is not a timm model"):
        build_model("efficientnet_b9000", 7)


@pytest.mark.skipif(not LITE0.exists(), reason=f"shared Lite0 weights not found at {LITE0}")
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_shared_lite0_weights(name):
    from safetensors.torch import load_file

    sd = load_file(str(LITE0))
    m = build_model(name, 7, weights=LITE0, bn_momentum=0.1)
    assert torch.equal(m.conv_stem.weight, sd["conv_stem.weight"])
    norms = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert norms and all(b.momentum == 0.1 for b in norms)
    # Lite0 was trained with 0.5/0.5 normalisation; timm's config for it says so and we use it.
    if name.startswith("tf_"):
        assert normalization(m)[0] == pytest.approx((0.5, 0.5, 0.5))
