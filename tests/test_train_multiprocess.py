"""Two JAX processes on localhost (gloo CPU collectives): training agrees on the loss; export is collective.

Each process has one CPU device; the mesh spans both, each process feeds its half of every global
batch. The loss of a step is a global value, so both processes must log the same number.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
from test_train_support import PROJECT_ROOT, build_shards, free_port, subprocess_env, train_command

LOSS_LINE = re.compile(r"distill step (\d+) loss ([-+0-9.eE]+) lr \S+ \(process (\d)\)")


def run_together(cmds: list[list[str]], timeout: float) -> list[str]:
    """Starts one process per command (1 CPU device each), waits for all, asserts each exited 0; their outputs.

    A timeout kills every process, so a peer stuck in a collective never outlives the test."""
    procs = [
        subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for cmd in cmds
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def test_two_processes_agree_on_the_loss(tmp_path):
    shard_dir = build_shards(tmp_path / "shards")
    port = free_port()
    workdir = str(tmp_path / "w")
    cmds = [
        train_command(
            workdir,
            shard_dir,
            f"--config.distributed.coordinator=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}",
            "--config.run_baseline=False",
            "--config.optim.max_steps=4",
            "--config.checkpoint.every_steps=2",
        )
        for pid in range(2)
    ]
    outs = run_together(cmds, timeout=900)
    losses = [
        {int(m[1]): float(m[2]) for m in LOSS_LINE.finditer(out) if int(m[3]) == pid} for pid, out in enumerate(outs)
    ]
    assert sorted(losses[0]) == [1, 2, 3, 4], outs[0][-3000:]
    assert losses[0] == losses[1]
    # both processes took part in the checkpoints and process 0 wrote the report
    assert os.path.exists(os.path.join(workdir, "distill", "checkpoints", "4"))
    assert os.path.exists(os.path.join(workdir, "report.json"))
    # the export is collective: one model directory (no per-process leftovers) that loads
    from internvqa_jax.models import saving

    assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["student", "teacher"]
    saving.load_model_dir(os.path.join(workdir, "export", "student"))


def test_two_processes_export_one_model_dir_from_fsdp_sharded_params(tmp_path):
    """Both processes call save_model_dir on FSDP-sharded trained params: one complete dir, written by process 0."""
    import jax
    from flax import nnx

    from internvqa_jax.models import registry, saving

    port = free_port()
    worker = os.path.join(PROJECT_ROOT, "tests", "multiprocess_export_worker.py")
    run_together([[sys.executable, worker, str(port), str(pid), str(tmp_path)] for pid in range(2)], timeout=300)
    reports = [json.loads((tmp_path / f"process{pid}.json").read_text()) for pid in range(2)]
    assert reports[0]["split_leaves"] > 0  # some parameters really were split over the two processes
    assert [r["orbax_saves"] for r in reports] == [1, 0]  # process 1 wrote nothing
    assert all(r["complete_on_return"] for r in reports)  # nobody returned before the directory was complete
    # exactly one model directory, no temporary leftovers
    assert sorted(os.listdir(tmp_path / "export")) == ["student"]
    # a failure on process 0 (its folder cannot be created) reaches process 1 too
    assert reports[0]["failure"].startswith(("FileExistsError", "NotADirectoryError")), reports[0]
    assert reports[1]["failure"].startswith("RuntimeError: save_model_dir: process 0 failed"), reports[1]
    assert not (tmp_path / "not_a_dir").stat().st_size

    model, meta = saving.load_model_dir(tmp_path / "export" / "student")
    assert meta["inference"] == {"process_count": 2}
    ref = np.load(tmp_path / "scores.npz")
    scores = np.asarray(model(jax.numpy.asarray(ref["x"]))["logits"])
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-5, rtol=0)
    # and the saved parameters are the trained ones, not a fresh initialisation
    fresh = registry.create_model(meta["config_object"], nnx.Rngs(0))
    assert np.abs(np.asarray(fresh(jax.numpy.asarray(ref["x"]))["logits"]) - ref["scores"]).max() > 1e-3
