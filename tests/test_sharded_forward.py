"""FSDP-sharded forward on 8 simulated CPU devices equals the unsharded forward.

Runs in a subprocess so that the 8-device XLA flag applies whatever the test session imported first.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from internvqa_jax import sharding
from internvqa_jax.models import registry

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from internvqa_jax import sharding
    from internvqa_jax.models import registry

    assert jax.device_count() == 8, jax.devices()
    results = {}
    for scan in (False, True):
        config = registry.get_config("tiny", depth=3, scan_layers=scan)
        model = registry.create_model(config, nnx.Rngs(3))
        x = jax.random.normal(jax.random.key(0), (8, 4, 56, 56, 3))
        with jax.default_matmul_precision("highest"):
            reference = model(x, return_layers=[0])
        mesh = sharding.make_mesh(data=2, fsdp=4)
        sharding.shard_model(model, mesh)
        kernel = model.blocks.scanned.mlp.fc1.kernel[...] if scan else model.blocks[0].mlp.fc1.kernel[...]
        shard_shape = kernel.addressable_shards[0].data.shape
        graphdef, state = nnx.split(model)
        xs = jax.device_put(x, sharding.batch_sharding(mesh))

        @jax.jit
        def forward(state, x):
            out = nnx.merge(graphdef, state)(x, return_layers=[0])
            return out["logits"], out["pooled"], out["blocks"][0]

        with jax.default_matmul_precision("highest"):
            logits, pooled, block0 = forward(state, xs)
        results[str(scan)] = dict(
            logits=float(np.abs(np.asarray(logits) - np.asarray(reference["logits"])).max()),
            pooled=float(np.abs(np.asarray(pooled) - np.asarray(reference["pooled"])).max()),
            block0=float(np.abs(np.asarray(block0) - np.asarray(reference["blocks"][0])).max()),
            scale=float(np.abs(np.asarray(reference["pooled"])).max()),
            kernel_shape=list(kernel.shape),
            shard_shape=list(shard_shape),
            batch_shard=list(xs.addressable_shards[0].data.shape),
        )
    print("RESULT" + json.dumps(results))
    """
)


def test_sharded_forward_equals_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    line = [out for out in proc.stdout.splitlines() if out.startswith("RESULT")][-1]
    results = json.loads(line[len("RESULT") :])
    for scan, r in results.items():
        assert r["logits"] <= 1e-5 and r["block0"] <= 1e-4 and r["pooled"] <= 1e-5 * max(r["scale"], 1.0), (scan, r)
        # fc1 kernel (embed=64, mlp=256) [stacked: (2, 64, 256)]: the embed axis is split over fsdp=4.
        assert r["shard_shape"][-2] == r["kernel_shape"][-2] // 4 and r["shard_shape"][-1] == r["kernel_shape"][-1], (
            scan,
            r,
        )
        assert r["batch_shard"][0] == 1  # batch of 8 over data x fsdp = 8 devices


def test_partition_rules():
    mesh = sharding.make_mesh(data=1, fsdp=1)
    assert mesh.axis_names == ("data", "fsdp")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)

    class FakeMesh:
        shape = {"data": 1, "fsdp": 4}

    spec = sharding.partition_spec
    assert spec((64, 256), ("embed", "mlp"), FakeMesh) == PartitionSpec("fsdp", None)
    assert spec((2, 256, 64), ("layers", "mlp", "embed_out"), FakeMesh) == PartitionSpec(None, "fsdp", None)
    assert spec((66, 256), ("embed", "mlp"), FakeMesh) == PartitionSpec(None, "fsdp")  # 66 not divisible
    assert spec((768, 2), ("out", "classes"), FakeMesh) == PartitionSpec("fsdp", None)
    assert spec((4,), ("embed",), FakeMesh) == PartitionSpec()  # tiny leaves stay replicated
    assert spec((3, 1024, 2048), None, FakeMesh) == PartitionSpec(None, None, "fsdp")  # unnamed: largest dim
    with pytest.raises(ValueError, match="must divide"):
        sharding.make_mesh(fsdp=3, devices=jax.devices()[:1])


def test_state_shardings_tree_matches_state():
    model = registry.create_model(registry.get_config("tiny"), nnx.Rngs(0))
    state = nnx.state(model)
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(state, mesh)
    assert jax.tree.structure(state) == jax.tree.structure(shardings)
    abstract = jax.eval_shape(
        lambda: {"params": nnx.state(registry.create_model(registry.get_config("tiny"), nnx.Rngs(0))), "step": 0}
    )
    out = sharding.state_shardings(abstract, mesh)
    assert isinstance(out["step"], jax.sharding.NamedSharding)
    np.testing.assert_equal(sharding.batch_sharding(mesh).spec, PartitionSpec(("data", "fsdp")))
