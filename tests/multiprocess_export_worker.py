"""One process of the two-process export test (tests/test_train_multiprocess.py).

    python tests/multiprocess_export_worker.py PORT PROCESS_ID OUT_DIR

Both processes train the tiny InternVideo2 preset a few SGD steps with its parameters FSDP-sharded
over the two processes (one CPU device each), then export it with `saving.save_model_dir` (every
process calls it). Each process writes `OUT_DIR/process<i>.json`: what it saw (orbax saves it ran,
whether the export was complete when the call returned, the error of an export meant to fail);
process 0 also writes `OUT_DIR/scores.npz`, the input and the scores of the trained sharded model.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from internvqa_jax import io_utils, sharding
from internvqa_jax.models import registry, saving

STEPS = 3
MODEL = dict(num_frames=2, img_size=28, embed_dim=32, depth=1, num_heads=2, clip_embed_dim=16, attn_pool_num_heads=2)


def count_orbax_saves() -> list[int]:
    """Wraps `ocp.Checkpointer.save` so this process can report how often it ran."""
    calls = [0]
    original = ocp.Checkpointer.save

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    ocp.Checkpointer.save = counting
    return calls


def train(model: nnx.Module, x: jax.Array, y: jax.Array) -> None:
    """A few SGD steps on an MSE loss, parameters kept in their FSDP shardings (in place)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shardings = jax.tree.map(lambda a: a.sharding, params)

    @jax.jit
    def step(params, rest):
        def loss(p):
            return jnp.mean((nnx.merge(graphdef, p, rest)(x)["logits"][:, 0] - y) ** 2)

        grads = jax.grad(loss)(params)
        new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return jax.lax.with_sharding_constraint(new, shardings)

    for _ in range(STEPS):
        params = step(params, rest)
    nnx.update(model, params)


def main(port: int, pid: int, out: pathlib.Path) -> None:
    """Trains, scores and exports on this process; see the module docstring."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    saves = count_orbax_saves()
    mesh = sharding.make_mesh(data=1, fsdp=2)
    model = registry.create_model(registry.get_config("tiny", **MODEL), nnx.Rngs(0))  # same seed: same init everywhere
    sharding.shard_model(model, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    x_host = np.random.default_rng(1).normal(size=(4, 2, 28, 28, 3)).astype(np.float32)
    x = jax.device_put(x_host, replicated)
    y = jax.device_put(np.linspace(0.1, 0.9, 4, dtype=np.float32), replicated)
    train(model, x, y)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    split_leaves = sum(not a.is_fully_addressable and not a.is_fully_replicated for a in leaves)
    scores = jax.jit(lambda m: m(x)["logits"], out_shardings=replicated)(model)

    export = out / "export" / "student"
    saving.save_model_dir(model, export, inference={"process_count": jax.process_count()})
    complete = (export / io_utils.MODEL_CONFIG_FILE).is_file() and (
        export / io_utils.PARAMS_DIR / "_CHECKPOINT_METADATA"
    ).is_file()
    saves_after_export = saves[0]

    # process 0 cannot create a folder under a regular file: every process must hear of the failure
    (out / "not_a_dir").touch()
    failure = None
    try:
        saving.save_model_dir(model, out / "not_a_dir" / "model")
    except Exception as err:  # reported, the test checks each process's error
        failure = f"{type(err).__name__}: {err}"

    report = {
        "split_leaves": split_leaves,
        "orbax_saves": saves_after_export,
        "complete_on_return": complete,
        "failure": failure,
    }
    if pid == 0:
        np.savez(out / "scores.npz", x=x_host, scores=np.asarray(scores.addressable_data(0)))
    (out / f"process{pid}.json").write_text(json.dumps(report))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3]))
