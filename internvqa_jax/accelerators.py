"""Per-chip figures of the accelerators the planner compiles for, and how a topology name maps to them.

TPU: the Cloud TPU system-architecture pages, https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p
and .../v6e ("Peak compute per chip (bf16)", "HBM capacity per chip", "HBM bandwidth per chip"). HBM
capacities are the pages' "GB", which are GiB (XLA reports 15.75 GiB usable on a 16 GiB v5e chip).

GPU: NVIDIA's data sheets (dense bf16 tensor-core peak without sparsity) and the device descriptions
XLA publishes for its GPU targets (memory size and bandwidth). Each GPU's description is package data,
`internvqa_jax/gpu_targets/<name>.txtpb`, a text-format `GpuTargetConfigProto` that the CUDA plugin
(`pip install -e '.[gpu-plan]'`) compiles for without a GPU.

Topology names: `GENERATION:SHAPE` as libtpu takes them for TPUs (`v5e:2x4`, `v4:2x2x1`), and
`GPU:COUNT` or `GPU:NODESxCOUNT` for GPUs (`h100:8`, one node of 8; `h100:2x8`, two nodes of 8).
"""

from __future__ import annotations

import dataclasses
import importlib.resources

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One chip (a TPU chip or a GPU): what the planner's roofline and `fits` use."""

    name: str
    platform: str  # "tpu" | "gpu": the platform the planner traces the model for
    hbm_bytes: int  # device memory per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # device memory bandwidth per chip
    device_kind: str  # jax Device.device_kind of this chip
    megacore: bool = False  # TPU: two TensorCores that JAX drives as one device ("megacore" chip config)
    target_config: str = ""  # GPU: file name of its GpuTargetConfigProto under gpu_targets/


TPUS: dict[str, Accelerator] = {
    "v4": Accelerator("v4", "tpu", 32 * GiB, 275e12, 1200e9, "TPU v4", megacore=True),
    "v5e": Accelerator("v5e", "tpu", 16 * GiB, 197e12, 819e9, "TPU v5 lite"),
    "v5p": Accelerator("v5p", "tpu", 95 * GiB, 459e12, 2765e9, "TPU v5", megacore=True),
    "v6e": Accelerator("v6e", "tpu", 32 * GiB, 918e12, 1640e9, "TPU v6 lite"),
}

GPUS: dict[str, Accelerator] = {
    "h100": Accelerator(
        "h100", "gpu", 84942979072, 989e12, 3.35232e12, "NVIDIA H100 80GB HBM3", target_config="h100.txtpb"
    ),
    "h200": Accelerator(
        "h200", "gpu", 151397597184, 989e12, 4.8e12, "NVIDIA H200 141GB HBM3e", target_config="h200.txtpb"
    ),
    "b200": Accelerator("b200", "gpu", 191514411008, 2250e12, 7.67232e12, "NVIDIA B200", target_config="b200.txtpb"),
    "a100-80": Accelerator(
        "a100-80", "gpu", 85100068864, 312e12, 2.03904e12, "NVIDIA A100-SXM4-80GB", target_config="a100-80.txtpb"
    ),
}

# Generation prefixes libtpu accepts in topology names, as the TPU table's keys.
TPU_ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p", "v5": "v5p", "v6e": "v6e"}
GPU_ALIASES = {"h100": "h100", "h200": "h200", "b200": "b200", "a100-80": "a100-80", "a100": "a100-80"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed `--topology`: the chip, and the shape in the form its compiler's topology API takes."""

    chip: Accelerator
    shape: str  # TPU: libtpu's name (v5e:2x4); GPU: SLICESxHOSTSxDEVICES (1x1x8)
    nodes: int = 1  # GPU: machines (processes) of the run


def parse_topology(topology: str) -> Topology:
    """The chip and shape of a topology name (`v5e:2x4`, `h100:8`, `h100:2x8`); bad names name the known ones."""
    generation, sep, shape = topology.partition(":")
    key = generation.lower()
    if not sep or not shape:
        raise ValueError(
            f"--topology: expected GENERATION:SHAPE such as v5e:2x4, v4:2x2x1, h100:8 or h100:2x8, got {topology!r}"
        )
    if key in TPU_ALIASES:
        return Topology(TPUS[TPU_ALIASES[key]], topology)
    if key in GPU_ALIASES:
        parts = shape.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--topology: GPU shape must be COUNT or NODESxCOUNT (h100:8, h100:2x8), got {topology!r}")
        nodes, count = (1, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        return Topology(GPUS[GPU_ALIASES[key]], f"{nodes}x1x{count}", nodes=nodes)
    raise ValueError(
        f"--topology: unknown accelerator {generation!r} in {topology!r}; expected one of "
        f"{sorted(TPU_ALIASES)} (TPU) or {sorted(GPU_ALIASES)} (GPU)"
    )


def chip_of_topology(topology: str) -> Accelerator:
    """The chip of a topology name such as `v5e:2x4`, `v4:2x2x1` or `h100:8`."""
    return parse_topology(topology).chip


def gpu_target_config(chip: Accelerator) -> str:
    """The text-format `GpuTargetConfigProto` of a GPU (package data)."""
    if chip.platform != "gpu":
        raise ValueError(f"{chip.name} is not a GPU")
    return (importlib.resources.files("internvqa_jax") / "gpu_targets" / chip.target_config).read_text()
