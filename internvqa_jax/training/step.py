"""Pure train and eval step functions over the state pytree (see `state.py`), ready for `jax.jit`.

Frames arrive as uint8 and are normalised on the device. A non-finite loss never reaches the
parameters: the update is skipped and the first such step is recorded in `nonfinite_step`, which the
loop reads at its next check and stops on.

Cached teacher (`LossSpec.cached_teacher`): the frozen teacher's outputs come with the batch
(`teacher_pool`, `teacher_score`, written once by `make_teacher_features` + `feature_cache`) and the
teacher network is not run, nor even merged, in the train step.

Unlabeled clips: a batch may carry `labeled` (B,) bool (`pipeline.TrainTransform`); the label
terms are then averaged over the labeled clips only and the teacher terms over all
(`losses.total_loss`). Without it every clip counts as labeled.

Token masking (`LossSpec.token_mask_ratio` > 0, UMT / InternVideo2 stage 1 use 0.8): the fine-tuning
`InternVideo2` takes no token mask (only the stage-2 `PretrainInternVideo2` does), so the student
runs on all tokens and this module selects, before the decoders, the same random visible positions
(cls + `losses.num_visible_patches` patches per clip, drawn from the step's rng) in the student's and
the teacher's aligned layers; the token loss is taken on those only. The student's score and
pooled feature still see every token. Unlike UMT the student's blocks attend over all tokens and no
compute is saved; that needs a `mask` argument on the fine-tuning model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from internvqa_jax import losses
from internvqa_jax.data import sampling
from internvqa_jax.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Which loss terms run and with what weights; `token_pairs` = aligned (student, teacher) layers."""

    weights: Mapping[str, float]
    smooth_l1_beta: float = 2.0
    token_pairs: tuple[tuple[int, int], ...] = ()
    teacher_frozen: bool = False
    cached_teacher: bool = False  # teacher outputs read from the batch instead of running the teacher
    token_mask_ratio: float = 0.0  # fraction of patch tokens left out of the token loss (0.8 = UMT)


def _prepare_input(frames: jax.Array, compute_dtype: Any) -> jax.Array:
    return sampling.normalize(frames).astype(compute_dtype)


def _score(logits: jax.Array) -> jax.Array:
    return jnp.reshape(logits.astype(jnp.float32), (logits.shape[0],))


def forward_losses(
    networks: state_lib.Networks,
    spec: LossSpec,
    params: Mapping[str, Any],
    frozen: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    compute_dtype: Any,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and its terms for one batch, running the networks the weights need.

    With `spec.cached_teacher` the teacher's pooled feature and score are `batch["teacher_pool"]`
    and `batch["teacher_score"]` (token distillation needs the live teacher and is refused).
    `rng` (a typed key) draws the token mask when `spec.token_mask_ratio` > 0.
    """
    x = _prepare_input(batch["frames"], compute_dtype)
    names = networks.graphdefs
    outputs: dict[str, Mapping[str, jax.Array]] = {}
    use_tokens = bool(spec.weights.get("token")) and spec.token_pairs
    if spec.cached_teacher:
        if use_tokens:
            raise ValueError(
                "cached teacher: token distillation needs the teacher's tokens, which the cache does not hold"
            )
        outputs["teacher"] = {"pooled": batch["teacher_pool"], "logits": batch["teacher_score"][:, None]}
    for name in ("student", "teacher"):
        if name not in names or name in outputs:
            continue
        layers = None
        if use_tokens:
            layers = [s for s, _ in spec.token_pairs] if name == "student" else [t for _, t in spec.token_pairs]
        out = state_lib.merge(networks, name, params, frozen)(x, return_layers=layers)
        if name == "teacher" and spec.teacher_frozen:
            out = jax.tree.map(jax.lax.stop_gradient, out)
        outputs[name] = out
    token_loss = None
    if use_tokens:
        decoders = state_lib.merge(networks, "decoders", params, frozen)
        s_blocks, t_blocks = list(outputs["student"]["blocks"]), list(outputs["teacher"]["blocks"])
        if spec.token_mask_ratio > 0:
            s_blocks, t_blocks = _visible_tokens(s_blocks, t_blocks, spec.token_mask_ratio, rng)
        token_loss = decoders(s_blocks, t_blocks)
    s, t = outputs.get("student"), outputs.get("teacher")
    s_pool = None if s is None else s["pooled"]
    if s_pool is not None and "projector" in names:  # heterogeneous: student width -> teacher width
        s_pool = state_lib.merge(networks, "projector", params, frozen)(s_pool.astype(jnp.float32))
    return losses.total_loss(
        spec.weights,
        batch["label"],
        student_score=None if s is None else _score(s["logits"]),
        student_pool=s_pool,
        teacher_score=None if t is None else _score(t["logits"]),
        teacher_pool=None if t is None else t["pooled"],
        token_loss=token_loss,
        smooth_l1_beta=spec.smooth_l1_beta,
        labeled=batch.get("labeled"),  # unlabeled clips reach the teacher terms only
    )


def _visible_tokens(s_blocks: list, t_blocks: list, ratio: float, rng: jax.Array | None) -> tuple[list, list]:
    """The aligned layers of both networks at the same random visible positions (see module doc)."""
    if rng is None:
        raise ValueError(f"token masking (ratio {ratio}) needs the step's rng")
    b, n = s_blocks[0].shape[:2]
    if t_blocks[0].shape[1] != n:
        raise ValueError(
            f"token masking: student layers have {n} tokens, teacher layers {t_blocks[0].shape[1]}; they must match position by position"
        )
    positions = losses.visible_token_indices(rng, b, n, ratio)
    return [losses.select_tokens(x, positions) for x in s_blocks], [
        losses.select_tokens(x, positions) for x in t_blocks
    ]


def make_train_step(
    networks: state_lib.Networks,
    spec: LossSpec,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    compute_dtype: Any = jnp.float32,
    ema_decay: float = 0.0,
) -> Callable[[dict, Mapping[str, jax.Array]], tuple[dict, dict[str, jax.Array]]]:
    """Returns `train_step(state, batch) -> (state, metrics)`; metrics are device scalars.

    A state with "ema" also gets `ema = d * ema + (1 - d) * params` after the update, with
    `d = min(ema_decay, (1 + step) / (10 + step))` so the average does not hold on to the
    random initial weights for the first thousand steps.
    """

    def loss_fn(params, frozen, batch, rng):
        return forward_losses(networks, spec, params, frozen, batch, compute_dtype, rng)

    def train_step(state: dict, batch: Mapping[str, jax.Array]) -> tuple[dict, dict[str, jax.Array]]:
        # The next step's key is the first half of the split, so a run's random stream does not
        # depend on whether it masks tokens; the second half draws this step's token mask.
        next_key, mask_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["frozen"], batch, mask_key
        )
        updates, new_opt = tx.update(grads, state["opt"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss)
        # Keep the last good parameters when the loss is NaN/inf; remember where it happened.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        step = state["step"]
        new_state = dict(state)
        new_state.update(
            step=step + 1,
            rng=jax.random.key_data(next_key),
            params=keep(new_params, state["params"]),
            opt=keep(new_opt, state["opt"]),
            nonfinite_step=jnp.where((state["nonfinite_step"] < 0) & ~finite, step + 1, state["nonfinite_step"]),
        )
        if "ema" in state:
            d = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
            new_state["ema"] = jax.tree.map(
                lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state["ema"], new_state["params"]
            )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
        metrics.update({f"loss_{k}": v for k, v in terms.items()})
        return new_state, metrics

    return train_step


def make_teacher_features(
    networks: state_lib.Networks, compute_dtype: Any = jnp.float32
) -> Callable[[dict, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """Returns `teacher_features(state, batch) -> {"teacher_pool" (B, D) f32, "teacher_score" (B,)}`.

    The same teacher forward as the uncached train step (same input preparation and dtype), so a
    step reading these from the cache computes the loss it would have computed running the teacher.
    """

    def teacher_features(state: dict, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        out = state_lib.merge(networks, "teacher", state["params"], state["frozen"])(
            _prepare_input(batch["frames"], compute_dtype)
        )
        return {"teacher_pool": out["pooled"].astype(jnp.float32), "teacher_score": _score(out["logits"])}

    return teacher_features


def make_score_step(
    networks: state_lib.Networks, compute_dtype: Any = jnp.float32, nets: Sequence[str] = ("student", "teacher")
) -> Callable[[dict, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """Returns `score_step(state, batch) -> {net: scores (B,)}` for those of `nets` the job has,
    averaging the logits over test views."""

    def score_step(state: dict, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        frames = batch["frames"]  # (B, V, T, H, W, 3)
        b, v = frames.shape[:2]
        x = _prepare_input(jnp.reshape(frames, (b * v,) + frames.shape[2:]), compute_dtype)
        scores = {}
        for name in ("student", "teacher"):
            if name in networks.graphdefs and name in nets:
                out = state_lib.merge(networks, name, state["params"], state["frozen"])(x)
                scores[name] = jnp.mean(jnp.reshape(_score(out["logits"]), (b, v)), axis=1)
        return scores

    return score_step
