"""The compile-ahead planner (`python -m internvqa_jax.aot`): a tiny teacher+student run compiled for a
TPU v5e 2x2 topology on this CPU machine (libtpu from the `tpu` extra; no TPU is used). Every config
for a TPU and a GPU topology: tests/test_plan_every_config.py.

- The CLI writes a JSON plan with every documented field, for the training step(s) and the student's
  scoring forward, and the figures hang together (peak = arguments + outputs + temporaries - aliases,
  fits = peak <= the chip's HBM, roofline = max(compute, memory) time, XLA's FLOPs near the model's).
- In process: the authors' partly frozen teacher with remat on both networks compiles at two
  batches, and the memory per clip is positive.
- `fits` and the batch search are checked on their own with figures that do not fit.
"""

import json
import sys

import pytest

sys.path.insert(0, "tests")

from test_train_support import TINY_OVERRIDES, run, tiny_config  # noqa: E402

FIELDS = (
    "program",
    "topology",
    "chips",
    "mesh",
    "global_batch",
    "hbm_bytes_per_chip",
    "peak_bytes_per_chip",
    "fits",
    "xla_flops_per_step",
    "analytic_flops_per_step",
    "roofline_seconds_per_step",
    "mfu_upper_bound",
)
TOPOLOGY = "v5e:2x2"  # 4 chips of 16 GiB


def _check_row(row: dict, chips: int = 4) -> None:
    for field in FIELDS:
        assert field in row and row[field] is not None, (field, row)
    from internvqa_jax import accelerators

    chip = accelerators.TPUS["v5e"]
    assert row["topology"] == TOPOLOGY and row["chips"] == chips and row["hbm_bytes_per_chip"] == chip.hbm_bytes
    assert row["mesh"] == {"data": 1, "fsdp": chips}
    assert (
        row["peak_bytes_per_chip"]
        == row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"] - row["alias_bytes"]
    )
    assert 0 < row["peak_bytes_per_chip"] < chip.hbm_bytes and row["fits"] is True and row["error"] is None
    compute = row["xla_flops_per_step"] / chips / chip.peak_bf16_flops
    memory = row["xla_bytes_accessed_per_chip"] / chip.hbm_bytes_per_s
    assert row["roofline_seconds_per_step"] == pytest.approx(max(compute, memory))
    assert 0 < row["mfu_upper_bound"] <= 1.0
    # XLA also counts the elementwise work (norms, softmax, GELU, the optimiser), a larger share at
    # these tiny widths than at the paper's; remat adds its recompute
    model = row["analytic_flops_per_step"] + row["analytic_recompute_flops_per_step"]
    assert 0.8 * model < row["xla_flops_per_step"] < 1.6 * model, row


def test_cli_writes_the_plan_json(tmp_path):
    out = tmp_path / "plan.json"
    flags = [f for f in TINY_OVERRIDES if "batch_size" not in f]
    cmd = [
        sys.executable,
        "-m",
        "internvqa_jax.aot",
        "--config=configs/homologous.py",
        f"--topology={TOPOLOGY}",
        "--config.mesh.fsdp=4",
        "--jobs=distill",
        "--batch=8",
        f"--json={out}",
        *flags,
    ]
    proc = run(cmd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    plan = json.loads(out.read_text())
    assert [r["program"] for r in plan["programs"]] == ["train_distill", "score_student"]
    train, score = plan["programs"]
    _check_row(train)
    _check_row(score)
    assert train["global_batch"] == 8
    # the kernel the TPU run traces, not the CPU host's: never the CPU-only chunked loop
    assert set(train["attention_impl"]) == {"student", "teacher"} and set(train["attention_impl"].values()) <= {
        "xla",
        "splash",
    }
    assert score["views"] == 3 and score["global_batch"] == 8  # test_views=1 segment x 3 crops; eval_batch_size=8
    assert "train_distill" in proc.stdout and "score_student" in proc.stdout  # the printed table


def test_authors_teacher_with_remat_compiles_at_two_batches():
    from internvqa_jax import aot

    c = tiny_config("unused")
    c.teacher.trainable = "authors"
    c.mesh.fsdp = 4
    for net in ("teacher", "student"):
        c[net].overrides.remat = True
        # XLA attention keeps activation memory growing with the batch at these tiny sizes; the
        # splash path's compile is tests/test_attention_kernels.py's.
        c[net].overrides.attention_impl = "xla"
    plan = aot.plan(c, TOPOLOGY, [8, 16], find=False, job_names=["distill"], score=False, max_batch=64)
    rows = plan["programs"]
    assert [r["global_batch"] for r in rows] == [8, 16]
    for row in rows:
        _check_row(row)
        assert row["remat"] == {"student": True, "teacher": True}
        assert row["analytic_recompute_flops_per_step"] > 0
    assert rows[1]["peak_bytes_per_chip"] > rows[0]["peak_bytes_per_chip"]
    slope = plan["bytes_per_clip_per_chip"]["train_distill"]
    assert slope == pytest.approx((rows[1]["peak_bytes_per_chip"] - rows[0]["peak_bytes_per_chip"]) / 2)
    assert "train_distill" in aot.format_table(plan)


def test_fits_is_false_above_the_chip_and_for_compiler_oom():
    from internvqa_jax import accelerators, aot, sharding

    chip = accelerators.TPUS["v5e"]
    mesh = sharding.make_mesh(1, 1)
    big = {
        "memory": {
            "argument": chip.hbm_bytes,
            "output": 10,
            "temp": 2**20,
            "alias": 10,
            "peak": chip.hbm_bytes + 2**20,
        },
        "cost": {"flops": 1e12, "bytes": 1e9},
        "kernel": "XLA attention (no fused attention call)",
        "seconds": 1.0,
    }
    row = aot._row("train_x", big, topology=TOPOLOGY, chip=chip, mesh=mesh, batch=8, analytic=1e12, recompute=0.0)
    assert row.fits is False and row.peak_bytes_per_chip == chip.hbm_bytes + 2**20
    assert row.roofline_seconds_per_step == pytest.approx(max(1e12 / chip.peak_bf16_flops, 1e9 / chip.hbm_bytes_per_s))
    message = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 25.80G of 15.75G hbm. the total memory required for HLO temporaries (25.80G) exceeds available HBM"
    assert aot._OOM.search(message) and aot._oom_bytes(message) == int(25.80 * 2**30)
    oom = aot._row(
        "train_x",
        {"error": message, "oom_bytes": aot._oom_bytes(message), "seconds": 1.0},
        topology=TOPOLOGY,
        chip=chip,
        mesh=mesh,
        batch=8,
        analytic=1e12,
        recompute=0.0,
    )
    assert oom.fits is False and oom.error and oom.xla_flops_per_step is None


def _search(peak_of_k, devices=4, capacity=100, max_k=32, start_batch=0):
    """Runs find_batch over a made-up memory curve; returns (best, tried, slope, expected clips per device)."""
    from internvqa_jax import aot

    def plan_at(batch: int):
        peak = peak_of_k(batch // devices)
        return aot.PlanRow(
            "train_x",
            TOPOLOGY,
            "v5e",
            devices,
            {"data": 1, "fsdp": devices},
            batch,
            capacity,
            int(peak),
            peak <= capacity,
            1.0,
            1.0,
            0.0,
            1.0,
            0.5,
        )

    expected = max((k for k in range(1, max_k + 1) if peak_of_k(k) <= capacity), default=0)
    best, tried, slope = aot.find_batch(plan_at, devices, max_batch=devices * max_k, start_batch=start_batch)
    assert (best.global_batch if best else 0) == expected * devices
    assert all((r.global_batch // devices <= expected) == r.fits for r in tried)
    assert [r.global_batch for r in tried] == sorted(r.global_batch for r in tried)
    if expected and expected < max_k:  # the answer is confirmed: the next batch up was compiled and did not fit
        assert any(r.global_batch == (expected + 1) * devices and not r.fits for r in tried)
    return best, tried, slope, expected


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 13, 40])
def test_find_batch_returns_the_largest_fitting_batch(limit):
    """Memory grows linearly with a fixed part: the secant lands on the limit within a few compiles."""
    _, tried, slope, _ = _search(lambda k: 20 + 80 * k / (limit + 0.5))
    assert len(tried) <= 4  # two points, the estimate, its neighbour: not a walk or a bisection from 1
    if limit >= 2:
        assert slope == pytest.approx(int(20 + 160 / (limit + 0.5)) - int(20 + 80 / (limit + 0.5)), abs=1)


@pytest.mark.parametrize("limit", [5, 11, 29])
def test_find_batch_when_memory_per_clip_falls_with_the_batch(limit):
    """As on v5e (0.72 GiB per clip per chip between 1 and 2 clips, 0.42 near 20): the first slope
    underestimates the limit, and the later secants, through points near the capacity, correct it."""
    shape = lambda k: 30 * k**0.7  # noqa: E731 - concave: every extra clip costs less
    scale = 80 / shape(limit + 0.5)
    _, tried, _, _ = _search(lambda k: 20 + scale * shape(k))
    assert len(tried) <= 6


def test_find_batch_starts_at_the_given_batch_and_searches_down_when_it_does_not_fit():
    """A start near the limit saves the small compiles; a start beyond it searches below."""
    linear = lambda k: 20 + 80 * k / 9.5  # noqa: E731 - fits up to 9 clips per device
    _, tried, _, _ = _search(linear, start_batch=4 * 6)
    assert min(r.global_batch for r in tried) == 24 and len(tried) <= 4
    _, tried, _, _ = _search(linear, start_batch=4 * 20)
    assert len(tried) <= 5
    _, tried, _, expected = _search(lambda k: 120.0, start_batch=4 * 8)  # nothing fits, not even 1 clip
    assert expected == 0 and [r.global_batch for r in tried] == [4, 32]


def test_topology_names_and_v4_megacore():
    from internvqa_jax import accelerators, aot

    chip_of = accelerators.chip_of_topology
    assert chip_of("v5e:2x4").name == "v5e" and chip_of("v5p:2x2x1").name == "v5p"
    assert chip_of("h100:8").name == "h100" and accelerators.parse_topology("h200:2x8").shape == "2x1x8"
    with pytest.raises(ValueError, match="unknown accelerator"):
        chip_of("v9x:2x2")
    with pytest.raises(ValueError, match="GENERATION:SHAPE"):
        chip_of("v5e-8")
    with pytest.raises(ValueError, match="COUNT or NODESxCOUNT"):
        chip_of("h100:2x2x2")
    # v4 chips have two TensorCores: one device per chip (megacore), so a mesh of 4 chips builds
    devices, topo = aot.topology_devices("v4:2x2x1")
    assert topo.chip.name == "v4" and len(devices) == 4
    from configs import homologous

    c = homologous.get_config()
    c.mesh.fsdp = 4
    assert dict(aot.plan_mesh(c, devices).shape) == {"data": 1, "fsdp": 4}
    # GPUs from the package's descriptions: two nodes of 8 are 16 devices on 2 processes
    gpus, topo = aot.topology_devices("h100:2x8")
    assert topo.chip.platform == "gpu" and len(gpus) == 16 and aot.process_count(gpus) == 2
    assert gpus[0].device_kind == accelerators.GPUS["h100"].device_kind
