"""Starting a run from model directories (teacher_init / student_init), non-strict like the authors' load."""

import jax
import numpy as np
from flax import nnx
from test_train_support import tiny_config


def test_teacher_init_loads_matching_params_and_reports_missing(tmp_path):
    from internvqa_jax.models import registry, saving
    from internvqa_jax.training import builder
    from internvqa_jax.training.jobs import plan_jobs

    c = tiny_config("unused")
    job = plan_jobs(c)[0]
    built = builder.build(c, job, total_steps=10)
    # a "converted" teacher: same architecture, other weights, and a 3-output head (not loadable)
    cfg = built.model_configs["teacher"].replace(num_classes=3)
    source = registry.create_model(cfg, nnx.Rngs(123))
    saving.save_model_dir(source, tmp_path / "teacher")

    state = jax.jit(built.init_fn)()
    loaded = builder.load_initial_weights(state, built, {"teacher": str(tmp_path / "teacher")})
    src = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
    for part in ("params", "frozen"):
        for path, var in nnx.to_flat_state(loaded[part]["teacher"]):
            if path[0] == "head":  # shape mismatch: keeps its fresh initialisation
                np.testing.assert_array_equal(
                    var.get_value(), dict(nnx.to_flat_state(state[part]["teacher"]))[path].get_value()
                )
            else:
                np.testing.assert_array_equal(var.get_value(), src[path].get_value())
    # the student was not asked for: untouched; optimiser moments re-initialised to zero
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["student"], jax.device_get(state["params"]["student"]))
    assert all(float(np.abs(x).sum()) == 0 for x in jax.tree.leaves(loaded["opt"]) if np.asarray(x).dtype == np.float32)
