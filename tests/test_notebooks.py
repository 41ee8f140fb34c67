"""Executes both Colab notebooks top to bottom on CPU with tiny settings injected into their PARAMS cell.

Each notebook runs in a real Jupyter kernel through papermill (the `parameters`-tagged cell gets
the test's values). A cell that raises fails the test. The kernel runs with a network guard
(`sitecustomize` on PYTHONPATH) that refuses and records every connection to a non-loopback
address, in the kernel and in every process it starts: the notebooks may read only what they are
pointed at, never download.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import imageio_ffmpeg
import nbformat
import pytest

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = PROJECT_ROOT / "notebooks"

# Installed into the kernel's PYTHONPATH: refuses non-loopback connections and logs each attempt.
NETWORK_GUARD = """
import ipaddress, os, socket

_LOG = os.environ.get("NOTEBOOK_NETWORK_LOG", "")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _is_loopback(address):
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()} {address!r}\\n")
        raise ConnectionRefusedError(f"network guard: connection to {address!r} refused in a notebook test")


def _guarded_connect(self, address):
    _check(self, address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
"""


def _params_cell(path: pathlib.Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(notebook, its single `parameters`-tagged cell)."""
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return nb, tagged[0]


@pytest.fixture(scope="module")
def guard_env(tmp_path_factory) -> tuple[dict[str, str], pathlib.Path]:
    """Environment of the notebook kernels: CPU JAX, the network guard, the project importable."""
    guard_dir = tmp_path_factory.mktemp("guard")
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    log = guard_dir / "connections.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(guard_dir), str(PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["NOTEBOOK_NETWORK_LOG"] = str(log)
    env["JAX_PLATFORMS"] = "cpu"
    env["MPLBACKEND"] = "Agg"
    return env, log


def _execute(
    name: str, params: dict, out_dir: pathlib.Path, env: dict[str, str], extra_env: dict[str, str] | None = None
) -> nbformat.NotebookNode:
    """Runs notebooks/<name> with `params` through papermill in a subprocess; fails on any cell error."""
    out = out_dir / f"executed_{name}"
    params_file = out_dir / f"params_{pathlib.Path(name).stem}.json"
    params_file.write_text(json.dumps(params))
    script = textwrap.dedent(
        f"""
        import json, papermill
        papermill.execute_notebook({str(NOTEBOOKS / name)!r}, {str(out)!r}, parameters=json.load(open({str(params_file)!r})),
                                   kernel_name="python3", cwd={str(out_dir)!r}, progress_bar=False, log_output=False)
        """
    )
    run_env = {**env, **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-c", script], env=run_env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return nbformat.read(out, as_version=4)


def _text_outputs(nb: nbformat.NotebookNode) -> str:
    """Everything the executed notebook printed (streams and plain-text results), concatenated."""
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            elif "data" in o and "text/plain" in o["data"]:
                parts.append(o["data"]["text/plain"])
    return "".join(parts)


def _make_clip(path: pathlib.Path, source: str, size: str, seconds: float, encoder: tuple[str, ...]) -> None:
    """A short clip of an ffmpeg lavfi source, encoded with `encoder` arguments."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [
        ffmpeg,
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"{source}=size={size}:rate=8",
        "-t",
        str(seconds),
        *encoder,
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", ["quickstart.ipynb", "distill_tpu.ipynb"])
def test_one_params_cell_and_no_outputs_committed(name):
    nb, params = _params_cell(NOTEBOOKS / name)
    assert "PARAMS" in params.source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{name}: committed with outputs in a cell starting {cell.source[:40]!r}"
            # Every knob lives in PARAMS: no other cell assigns an UPPER_CASE name.
            if cell is not params:
                for line in cell.source.splitlines():
                    head = line.split("=")[0].strip()
                    assert not (head.isupper() and "=" in line and "==" not in line), (
                        f"{name}: knob {head} set outside PARAMS"
                    )


# Ways a cell could fetch something. Allowed only where the user points it: pip in the install cell
# (skipped when the package is importable) and gsutil in the GCS cell (skipped when GCS_SOURCE is empty).
DOWNLOADERS = (
    "urllib",
    "requests",
    "urlopen",
    "wget",
    "curl",
    "hf_hub_download",
    "snapshot_download",
    "tfds.load",
    "download",
    "http://",
    "https://",
)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "distill_tpu.ipynb"])
def test_no_download_calls_in_code_cells(name):
    nb, params = _params_cell(NOTEBOOKS / name)
    for cell in nb.cells:
        if cell.cell_type != "code" or cell is params:  # PARAMS holds the REPO_URL placeholder only
            continue
        for token in DOWNLOADERS:
            assert token not in cell.source, f"{name}: a code cell mentions {token!r}: {cell.source[:80]!r}"
        if "pip" in cell.source:
            assert 'find_spec("internvqa_jax") is None' in cell.source, f"{name}: pip outside the guarded install cell"
        if "gsutil" in cell.source:
            assert "if GCS_SOURCE:" in cell.source, f"{name}: gsutil not guarded by GCS_SOURCE"


def test_network_guard_refuses_and_records(guard_env, tmp_path):
    """The guard the notebook kernels run under does catch a download attempt (TEST-NET address)."""
    env, log = guard_env
    code = "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=2)\nexcept ConnectionRefusedError as e:\n    print('refused:', e)\n"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "NOTEBOOK_NETWORK_LOG": str(tmp_path / "log")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "refused: network guard" in out.stdout, out.stdout + out.stderr
    assert "192.0.2.1" in (tmp_path / "log").read_text()
    loopback = "import socket\ns = socket.socket()\nprint(s.connect_ex(('127.0.0.1', 9)))\n"  # allowed: kernels talk over loopback
    out = subprocess.run(
        [sys.executable, "-c", loopback],
        env={**env, "NOTEBOOK_NETWORK_LOG": str(tmp_path / "log2")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not (tmp_path / "log2").exists(), out.stderr


# --------------------------------------------------------------------------- quickstart


@pytest.mark.slow
def test_quickstart_converts_scores_and_plots(tmp_path, fixtures_dir, guard_env):
    env, log = guard_env
    # "Uploaded" official checkpoint: the random-weight stage-2 state dict made by the official code.
    ckpt = tmp_path / "upload" / "InternVideo2-stage2_tiny.safetensors"
    ckpt.parent.mkdir()
    shutil.copy(fixtures_dir / "internvideo2" / "mm_tiny_stage2.safetensors", ckpt)
    index = json.loads((fixtures_dir / "internvideo2" / "index.json").read_text())
    kwargs = {
        k: index["mm_tiny_stage2"]["constructor_kwargs"][k]
        for k in ("num_heads", "attn_pool_num_heads", "img_size", "num_frames")
    }
    videos = tmp_path / "videos"
    videos.mkdir()
    _make_clip(videos / "testsrc2_h264.mp4", "testsrc2", "96x64", 3.0, ("-c:v", "libx264", "-crf", "30"))
    _make_clip(videos / "mandelbrot_mpeg4.mp4", "mandelbrot", "80x80", 2.0, ("-c:v", "mpeg4", "-q:v", "10"))
    (videos / "broken.mp4").write_bytes(b"not a video")  # reported, the others still scored
    out = tmp_path / "out"
    params = {
        "CHECKPOINT": str(ckpt),
        "ARCH": "internvideo2",
        "PRESET": "",
        "MODEL_KWARGS": kwargs,
        "NUM_FRAMES": 4,
        "IMG_SIZE": 56,
        "CONVERTED_DIR": str(tmp_path / "converted"),
        "VIDEOS": [str(videos)],
        "SEGMENT_SECONDS": 1.0,
        "BATCH_SIZE": 6,
        "OUTPUT_DIR": str(out),
    }
    nb = _execute("quickstart.ipynb", params, tmp_path, env)
    text = _text_outputs(nb)

    assert "already importable: nothing installed" in text
    assert "backend: cpu" in text and "mesh: {'data': 1, 'fsdp': 1}" in text
    # Conversion: stage-2 tensors consumed, CLIP-alignment ones dropped, a fresh head.
    assert "newly initialised" in text and "fc_norm" in text
    config = json.loads((tmp_path / "converted" / "model_config.json").read_text())
    assert config["config"]["num_frames"] == 4 and config["config"]["img_size"] == 56
    # Scores: one row per file, the broken one with its reason.
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 4, rows
    scored = [r for r in rows[1:] if "broken.mp4" not in r]
    assert all(r.split(",")[1] not in ("", "nan") for r in scored)
    assert any("broken.mp4" in r and r.split(",")[1] == "" for r in rows[1:])
    # Curves: a PNG per scored clip, shown inline.
    assert sorted(p.name for p in (out / "segments").glob("*.png")) == ["mandelbrot_mpeg4.png", "testsrc2_h264.png"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
    assert not log.exists() or not log.read_text(), f"network access attempted: {log.read_text()}"


# --------------------------------------------------------------------------- distill_tpu


@pytest.mark.slow
def test_distill_prepares_trains_evaluates_and_exports(tmp_path, guard_env):
    env, log = guard_env
    # A CSV dataset "on Drive": 5 source contents x 2 codecs, tiny clips, one row pointing at a missing file.
    data = tmp_path / "drive" / "mydata"
    data.mkdir(parents=True)
    sources = ("testsrc2", "mandelbrot", "rgbtestsrc", "smptebars", "life")
    rows = ["path,score,source"]
    for s, source in enumerate(sources):
        for c, (codec, encoder) in enumerate(
            {"h264": ("-c:v", "libx264", "-crf", "35"), "mpeg4": ("-c:v", "mpeg4", "-q:v", "12")}.items()
        ):
            name = f"{source}_{codec}.mp4"
            _make_clip(data / name, source, "72x64", 1.0, encoder)
            rows.append(f"{name},{0.40 + 0.08 * s + 0.05 * c:.2f},{source}")
    rows.append("missing.mp4,0.5,ghost")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")

    workdir = tmp_path / "runs"
    shard_dir = tmp_path / "shards"
    export = workdir / "student.safetensors"
    params = {
        "MESH_DATA": -1,
        "MESH_FSDP": 1,
        "COMPUTE_DTYPE": "float32",
        "DATASET": "csv",
        "DATA_ROOT": str(data / "labels.csv"),
        "SHARD_DIR": str(shard_dir),
        "PREPARE_FRAMES": 8,
        "PREPARE_SHORT_SIDE": "native",
        "PREPARE_WORKERS": 1,
        "WORKDIR": str(workdir),
        "RUN_TEACHER_FINETUNE": True,
        # The demo presets (tiny teacher and student); 2 steps each, tiny batches and eval.
        "CONFIG_OVERRIDES": {
            "optim.max_steps": 2,
            "optim.batch_size": 2,
            "data.eval_batch_size": 2,
            "data.frames": 4,
            "data.size": 112,
            "data.spatial_mode": "resize_crop",
            "test_views": 1,
            "run_baseline": False,
            "progress": False,
            "checkpoint.async_save": False,
            "log_every_steps": 1,
        },
        "SHOW_TENSORBOARD": False,
        "EVAL_SPLIT": "test",
        "EVAL_BOOTSTRAP": 20,
        "EXPORT_PATH": str(export),
    }
    # Two simulated CPU devices: the mesh, the global batch and the jitted steps span both.
    nb = _execute("distill_tpu.ipynb", params, tmp_path, env, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    text = _text_outputs(nb)

    assert "backend: cpu" in text and "mesh: {'data': 2, 'fsdp': 1}" in text
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["counts"]["records"] == 10 and manifest["counts"]["skipped"] == 1
    # Teacher fine-tuning, then distillation starting from its export.
    assert json.loads((workdir / "teacher" / "teacher" / "result.json").read_text())["steps"] == 2
    report = json.loads((workdir / "distill" / "report.json").read_text())
    assert report["config"]["teacher"]["init"] == str(workdir / "teacher" / "export" / "teacher")
    assert set(report["jobs"]) == {"distill"} and report["jobs"]["distill"]["steps"] == 2
    for which in ("student", "teacher"):
        metrics = json.loads((workdir / "distill" / f"eval_{which}_test" / "metrics.json").read_text())
        assert metrics["split"] == "test" and len(metrics["predictions"]) == 2
    # PyTorch export: state dict + sidecar, and the PyTorch model agrees with the Flax one.
    assert export.is_file() and export.with_suffix(".json").is_file()
    diff = [line for line in text.splitlines() if "max difference" in line]
    assert diff and float(diff[-1].rsplit(" ", 1)[-1]) < 1e-4, diff
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the student's and the teacher's scatter plots
    assert not log.exists() or not log.read_text(), f"network access attempted: {log.read_text()}"
