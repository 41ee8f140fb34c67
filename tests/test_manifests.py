"""The Flax models' converted key sets and shapes equal the official manifests of every published size.

Checked on abstract models (`nnx.eval_shape`): nothing of the 1B/6B size is allocated.
"""

import json
import pathlib
import re

import pytest
from flax import nnx

from internvqa_jax.models import registry
from weight_conversion.internvideo2_layout import torch_shapes as internvideo2_torch_shapes

MANIFEST_PATH = pathlib.Path(__file__).resolve().parent / "fixtures" / "internvideo2" / "state_dict_manifests.json"
MANIFESTS = json.loads(MANIFEST_PATH.read_text()) if MANIFEST_PATH.is_file() else {}


def config_for(entry: str, scan_layers: bool):
    """Preset config named by a manifest entry such as finetune_B14_f8_224_nc1 or stage2_vision_encoder_1B_f4_224."""
    finetune = re.fullmatch(r"finetune_(\w+?)_f(\d+)_(\d+)_nc(\d+)", entry)
    if finetune:
        size, frames, img, classes = finetune.groups()
        return registry.get_config(
            size, num_frames=int(frames), img_size=int(img), num_classes=int(classes), scan_layers=scan_layers
        )
    stage2 = re.fullmatch(r"stage2_vision_encoder_(\w+?)_f(\d+)_(\d+)", entry)
    if stage2:
        size, frames, img = stage2.groups()
        return registry.get_config(f"{size}_stage2", num_frames=int(frames), img_size=int(img), scan_layers=scan_layers)
    raise AssertionError(f"manifest entry {entry!r} has an unknown name pattern")


def test_manifests_present(fixtures_dir):
    assert {"finetune_S14_f8_224_nc1", "finetune_6B_f8_224_nc1", "stage2_vision_encoder_1B_f4_224"} <= set(MANIFESTS)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("entry", sorted(MANIFESTS))
def test_converted_keys_and_shapes_equal_manifest(entry, scan_layers):
    config = config_for(entry, scan_layers)
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(0)))
    shapes = internvideo2_torch_shapes(abstract)
    manifest = {k: tuple(v) for k, v in MANIFESTS[entry].items()}
    missing = sorted(set(manifest) - set(shapes))
    extra = sorted(set(shapes) - set(manifest))
    assert not missing and not extra, f"{entry}: missing {missing[:5]}, extra {extra[:5]}"
    wrong = {k: (shapes[k], manifest[k]) for k in manifest if shapes[k] != manifest[k]}
    assert not wrong, f"{entry}: shape mismatches (ours, official): {dict(list(wrong.items())[:5])}"
