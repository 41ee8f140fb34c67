"""Per-chip figures of Cloud TPU generations, and how a topology name maps to them.

Source: the Cloud TPU system-architecture pages, https://cloud.google.com/tpu/docs/v4,
.../v5e, .../v5p and .../v6e ("Peak compute per chip (bf16)", "HBM capacity per chip",
"HBM bandwidth per chip"). HBM capacities are the pages' "GB", which are GiB (XLA reports 15.75 GiB
usable on a 16 GiB v5e chip).
"""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU chip: what the planner's roofline and `fits` use."""

    name: str
    hbm_bytes: int  # HBM capacity per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    megacore: bool  # two TensorCores per chip that JAX drives as one device ("megacore" chip config)
    device_kind: str  # jax Device.device_kind of this chip


CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32 * GiB, 275e12, 1200e9, True, "TPU v4"),
    "v5e": ChipSpec("v5e", 16 * GiB, 197e12, 819e9, False, "TPU v5 lite"),
    "v5p": ChipSpec("v5p", 95 * GiB, 459e12, 2765e9, True, "TPU v5"),
    "v6e": ChipSpec("v6e", 32 * GiB, 918e12, 1640e9, False, "TPU v6 lite"),
}

# Generation prefixes libtpu accepts in topology names, as the table's keys.
ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p", "v5": "v5p", "v6e": "v6e"}


def chip_of_topology(topology: str) -> ChipSpec:
    """The chip of a topology name such as `v5e:2x4` or `v4:2x2x1`; unknown generations name the known ones."""
    generation, sep, shape = topology.partition(":")
    if not sep or not shape:
        raise ValueError(f"--topology: expected GENERATION:SHAPE such as v5e:2x4 or v4:2x2x1, got {topology!r}")
    key = ALIASES.get(generation.lower())
    if key is None:
        raise ValueError(
            f"--topology: unknown TPU generation {generation!r} in {topology!r}; expected one of {sorted(ALIASES)}"
        )
    return CHIPS[key]
