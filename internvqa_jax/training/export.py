"""Trained networks out of a job: model directories under `WORKDIR/export/` with their `inference.json`.

The export of a network is what `internvqa_jax.load`, `evaluate`, `predict` and `flax_to_torch`
read: its config and parameters (`models/saving.py`) and the test-time protocol and label scale it
was trained for (`models/inference_info.py:InferenceInfo`).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from internvqa_jax import io_utils
from internvqa_jax.data import sampling, shards
from internvqa_jax.models import saving
from internvqa_jax.models.inference_info import InferenceInfo, higher_is_better
from internvqa_jax.training import builder, jobs
from internvqa_jax.training import state as state_lib


def export_path(workdir: str, folder: str) -> str:
    """`WORKDIR/export/<folder>`."""
    return os.path.join(workdir, io_utils.EXPORT_DIR, folder)


def label_scale(label_kind: str) -> str:
    """The score scale in words: the method divides VMAF/MOS/DMOS by 100; CSV scores stay as given."""
    return "score as given in the dataset's CSV" if label_kind == "score" else f"{label_kind.upper()}/100"


def label_kind(manifest: dict[str, Any]) -> str:
    """The shards' label kind: the manifest's, else the one kind all records share, else "score"."""
    if manifest.get("label_kind"):
        return str(manifest["label_kind"])
    kinds = {r.get("label_kind", "") for r in manifest.get("records", [])}
    return kinds.pop() if len(kinds) == 1 else "score"


def inference_info(
    config: ml_collections.ConfigDict, net: str, manifest: dict[str, Any], model_config: Any = None
) -> InferenceInfo:
    """The test-time protocol of network `net` trained by `config` on the shards of `manifest`.

    With the trained network's `model_config`, the preset is named only when the network is that
    preset's ("custom" with the overrides otherwise)."""
    kind = label_kind(manifest)
    prepared = manifest.get("config", {})
    preset = str(config[net].preset)
    return InferenceInfo(
        **(saving.preset_fields(model_config, preset) if model_config is not None else {"preset": preset}),
        frames=int(config.data.frames),
        size=int(config.data.size),
        spatial_mode=str(config.data.spatial_mode),
        num_segments=int(config.test_views),
        seed=int(config.seed),
        mean=tuple(sampling.MEAN),
        std=tuple(sampling.STD),
        stored_frames=prepared.get("frames"),
        short_side=prepared.get("short_side"),
        dataset=str(config.data.name),
        label_kind=kind,
        label_scale=label_scale(kind),
        higher_is_better=higher_is_better(kind),
        head_trained=True,
    )


def export_networks(
    config: ml_collections.ConfigDict,
    job: jobs.JobSpec,
    built: builder.Built,
    state: dict,
    workdir: str,
    shard_dir: str,
) -> dict[str, str]:
    """Writes each trained network of `job` as a model directory; returns `{network: its path}`.

    Collective: every process calls it, process 0 writes. A network loaded from an earlier job's
    export (`job.init_exports`) is not written again: that export stays the one of record.
    """
    manifest = shards.load_manifest(shard_dir)
    # Not device_get: FSDP parameters may be split over processes; save_model_dir gathers them and is
    # collective (every process calls it, process 0 alone writes).
    out = {}
    reused = dict(job.init_exports)
    for net in job.nets:
        if net in reused:
            out[net] = export_path(workdir, reused[net])
            continue
        path = export_path(workdir, jobs.export_name(job, net))
        model = state_lib.merge(built.networks, net, state["params"], state["frozen"])
        saving.save_model_dir(model, path, inference=inference_info(config, net, manifest, model.config))
        out[net] = path
    return out
