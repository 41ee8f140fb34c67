"""What the rest of the package needs to know about a model family, in one record.

A model family (InternVideo2, its stage-2 encoder, VideoMamba, ...) is one `ModelFamily`, defined
beside its model and registered in `internvqa_jax.models.registry` with one line. Everything that
differs between families is read from the record: construction (`config_class`, `model_class`,
`presets`), the width of the `pooled` feature, the parameter groups of the optimiser (layer-wise lr
decay, weight decay) and of partial training (`trainable_filter`), and the PyTorch layout module
used by `weight_conversion`. No code outside the family's own file names its parameters.

Logical sharding names are shared, not per family: parameters carry the names of
`internvqa_jax.sharding.LOGICAL_RULES` ("embed", "mlp", "qkv", "heads", "out", "classes"), and a
family that needs another name adds it there.

A family's config has the fields the trainer sets or reads: `num_frames`, `img_size`, `num_classes`,
`dtype` (set from the run's data and compute dtype), `depth` (number of blocks: layer decay and
token distillation) and `embed_dim` (token width: token distillation).

A model built from a family's config is an `nnx.Module` whose `config` attribute is that config and
whose `__call__(x, return_layers=None)` takes channels-last video `(B, T, H, W, 3)` and returns a
dict with `pooled` `(B, pooled_dim)`, `logits` `(B, num_classes)` and `blocks` (the residual streams
of the `return_layers`, for token distillation); see `internvqa_jax.training.step`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

# An nnx filter `(path, value) -> bool` over a model's parameters.
ParamFilter = Callable[[Any, Any], bool]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every family's config: a frozen dataclass with `arch` and dict round trips.

    Subclasses set the class attribute `arch` (stored as `"arch"` in model_config.json, not a
    field) and declare their fields; `to_dict`/`from_dict`/`replace` are shared.
    """

    arch: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field (without `arch`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from `to_dict()` output (an `arch` key is ignored); unknown keys fail with their names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"arch"})
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k != "arch"})

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """How the optimiser groups a network's parameters, by the names on their paths.

    - layer-wise lr decay (BEiT / VideoMAE): a parameter whose path contains one of `embeddings`
      (as a substring) is layer 0; one under a block container (`blocks`: `<container>/<i>/...`)
      is layer i + 1; one under `<container>/<last_block>/...` (a separately kept last block) is
      layer depth; one under `<container>/<anything else>` is stacked (`nnx.scan`), its leading
      axis being the layer; everything else is layer depth + 1.
    - weight decay: a parameter is exempt when it has at most one dimension or its path contains
      one of `no_decay` (as a substring).

    The defaults describe a network of no family (token decoders, projections): no layers, and
    only biases and 1-D parameters exempt from weight decay.
    """

    embeddings: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    last_block: str | None = None
    no_decay: tuple[str, ...] = ("bias",)

    def layer_id(self, names: Sequence[Any], num_layers: int) -> int | None:
        """Layer index (0 .. num_layers + 1) of the parameter at key tuple `names`; None when stacked."""
        text = "/".join(str(n) for n in names)
        if any(e in text for e in self.embeddings):
            return 0
        for i, n in enumerate(names):
            if n in self.blocks:
                nxt = names[i + 1] if i + 1 < len(names) else None
                if isinstance(nxt, int) or (isinstance(nxt, str) and nxt.isdigit()):
                    return int(nxt) + 1
                if self.last_block is not None and nxt == self.last_block:
                    return num_layers
                return None  # stacked by nnx.scan: the leading axis is the layer
        if self.blocks:
            # Flat dotted names (`blocks.3.mlp...`), as in official state dicts.
            m = re.search(r"(?:{})[._](\d+)".format("|".join(map(re.escape, self.blocks))), text)
            if m:
                return int(m.group(1)) + 1
        return num_layers + 1

    def decays(self, names: Sequence[Any], ndim: int) -> bool:
        """Whether weight decay applies to the parameter at key tuple `names` with `ndim` dimensions."""
        text = "/".join(str(n) for n in names)
        return ndim > 1 and not any(n in text for n in self.no_decay)


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Analytic FLOPs of one clip's forward pass through a network (a multiply-add is 2 FLOPs).

    `weight_grad` is the forward FLOPs of the parts whose weights get gradients (a weight gradient
    costs about one forward of its part); `blocks` the forward FLOPs of every block (what
    rematerialisation recomputes in the backward pass).
    """

    forward: float
    weight_grad: float
    blocks: float


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family: construction, pooled width, parameter groups and PyTorch layout.

    - `config_class`: a `ModelConfig` subclass; its `arch` names the family in saved configs.
    - `model_class`: built as `model_class(config, rngs=rngs)`.
    - `presets`: preset name -> config fields (names are unique across the registry).
    - `pooled_dim`: width of the model's `pooled` output for a config (what feature distillation
      matches against the teacher's, through a projection when they differ).
    - `param_groups`: layer-decay and weight-decay groups (`ParamGroups`).
    - `trainable_filter`: config -> nnx filter of the parameters trained when only part of the
      network trains (InternVQA's teacher, `config.teacher.trainable="authors"`); None when the
      family defines no such part.
    - `torch_layout`: module implementing the official PyTorch layout (`weight_conversion`'s
      protocol: `matches_state_dict(keys)`, `convert_checkpoint(source, **request)`,
      `state_dict(model)`, `official_kwargs(config)`); None when there is none.
    - `flop_count`: `(config, partial) -> FlopCount` of one clip, `partial` True when only the
      part `trainable_filter` selects trains (what `internvqa_jax.flops` and the planner count);
      None when the family has no analytic count (the planner then reports none).
    """

    config_class: type
    model_class: type
    presets: Mapping[str, Mapping[str, Any]]
    pooled_dim: Callable[[Any], int]
    param_groups: ParamGroups = ParamGroups()
    trainable_filter: Callable[[Any], ParamFilter] | None = None
    torch_layout: str | None = None
    flop_count: Callable[[Any, bool], FlopCount] | None = None

    @property
    def arch(self) -> str:
        """The architecture name of the family's configs (the `arch` of model_config.json)."""
        return self.config_class.arch

    def config(self, preset: str, **overrides: Any) -> Any:
        """The config of `preset` with `overrides` applied (an unknown preset fails listing the known ones)."""
        if preset not in self.presets:
            raise KeyError(f"unknown {self.arch} preset {preset!r}; known: {sorted(self.presets)}")
        return self.config_class(**{**self.presets[preset], **overrides})

    def create(self, config: Any, rngs: Any) -> Any:
        """The family's model of `config`, initialised from `rngs`."""
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.arch} family: expected a {self.config_class.__name__}, got {type(config).__name__}")
        return self.model_class(config, rngs=rngs)
