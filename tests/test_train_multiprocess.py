"""Two JAX processes on localhost (gloo CPU collectives) train the tiny preset and agree on the loss.

Each process has one CPU device; the mesh spans both, each process feeds its half of every global
batch. The loss of a step is a global value, so both processes must log the same number.
"""

import os
import re
import subprocess

from test_train_support import PROJECT_ROOT, build_shards, free_port, subprocess_env, train_command

LOSS_LINE = re.compile(r"distill step (\d+) loss ([-+0-9.eE]+) lr \S+ \(process (\d)\)")


def test_two_processes_agree_on_the_loss(tmp_path):
    shard_dir = build_shards(tmp_path / "shards")
    port = free_port()
    workdir = str(tmp_path / "w")
    procs = []
    for pid in range(2):
        cmd = train_command(
            workdir, shard_dir,
            f"--config.distributed.coordinator=127.0.0.1:{port}", "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={pid}", "--config.run_baseline=False", "--config.optim.max_steps=4",
            "--config.checkpoint.every_steps=2",
        )
        procs.append(subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    losses = [{int(m[1]): float(m[2]) for m in LOSS_LINE.finditer(out) if int(m[3]) == pid} for pid, out in enumerate(outs)]
    assert sorted(losses[0]) == [1, 2, 3, 4], outs[0][-3000:]
    assert losses[0] == losses[1]
    # both processes took part in the checkpoints and process 0 wrote the report
    assert os.path.exists(os.path.join(workdir, "distill", "checkpoints", "4"))
    assert os.path.exists(os.path.join(workdir, "report.json"))
