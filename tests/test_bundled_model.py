"""The bundled default scorer: it loads without a path, it reproduces the figures recorded
beside it on the demo test split rebuilt from figures.json alone, and a missing bundle is named.

The rebuild makes every listed test source at its listed levels with `demo.build` (the same
function install and refigure used, `install.rebuild_test_videos`); the encodes and their VMAF
are the same bytes on every x86-64 CPU (`tests/test_encoder_determinism.py`), so the scores must
match the recorded ones to 1e-4 and the labels to 1e-6 on any machine. When a retrained bundle lists
more test encodes than `MAX_REBUILT_ENCODES` (CI has 2 cores), the first sources up to that budget
are rebuilt and the full-split figures are checked against the recorded per-video rows.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import time

import pytest

import internvqa_jax
from internvqa_jax import predict, pretrained
from internvqa_jax.data.datasets import demo
from internvqa_jax.pretrained import install

MAX_REBUILT_ENCODES = 120  # the demo test split of 5 sources x 24 encodes; about 1 min of ffmpeg on 2 idle cores
FIGURE_KEYS = (
    "srcc",
    "plcc",
    "srcc_cross_source",
    "plcc_cross_source",
    "srcc_within_source_mean",
    "srcc_within_source_min",
)


@pytest.fixture(scope="module")
def figures() -> dict:
    return pretrained.read_figures()


def rebuilt_sources(figures: dict) -> list[dict]:
    """The test sources to rebuild: all of them, or the first ones up to MAX_REBUILT_ENCODES encodes."""
    chosen, total = [], 0
    for entry in figures["test_sources"]:
        count = sum(len(q) for q in entry["levels"].values())
        if chosen and total + count > MAX_REBUILT_ENCODES:
            break
        chosen.append(entry)
        total += count
    return chosen


@pytest.fixture(scope="module")
def rebuilt(figures, tmp_path_factory) -> dict:
    """{video_id: (label, score, path)} of the rebuilt test encodes, scored with `internvqa_jax.load()`."""
    start = time.time()
    items = install.rebuild_test_videos(rebuilt_sources(figures), str(tmp_path_factory.mktemp("demo_test")))
    built = time.time()
    scorer = internvqa_jax.load()
    ids = sorted(items)
    results = scorer.score_many([items[v].path for v in ids])
    print(f"rebuilt {len(ids)} encodes in {built - start:.1f} s, scored in {time.time() - built:.1f} s")
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return {v: (items[v].label, float(r.score), items[v].path) for v, r in zip(ids, results)}


def test_figures_describe_the_bundle(figures):
    # what predict prints comes from here; it must say what the score is and what it compares across
    assert "VMAF/100" in figures["predicts"] and "not MOS" in figures["predicts"]
    assert "cross-source SRCC" in figures["comparable"] and "within-source SRCC" in figures["comparable"]
    assert figures["data"]["format"] == demo.FORMAT_VERSION and figures["data"]["num_frames"] == demo.NUM_FRAMES
    listed = {v["video_id"] for v in figures["videos"]}
    expected = {
        demo.video_id(e["source_id"], c, q)
        for e in figures["test_sources"]
        for c, qs in e["levels"].items()
        for q in qs
    }
    assert listed == expected, "test_sources and levels must name exactly the scored videos"
    assert not set(figures["train"]["train_sources"]) & {e["source_id"] for e in figures["test_sources"]}


def test_recorded_figures_follow_from_the_recorded_rows(figures):
    v = figures["videos"]
    again = install.held_out_figures(
        [r["score"] for r in v], [r["label"] for r in v], [r["source_id"] for r in v], [r["codec"] for r in v]
    )
    for key in FIGURE_KEYS:
        assert again[key] == pytest.approx(figures["held_out"][key], abs=1e-9), key
    assert again["srcc_per_codec"] == pytest.approx(figures["held_out"]["srcc_per_codec"], abs=1e-9)


def test_load_without_a_path_scores_a_video(rebuilt, figures):
    scorer = internvqa_jax.load()
    assert scorer.spec.label_kind == "vmaf" and scorer.spec.head_trained
    video_id, (_, _, path) = next(iter(rebuilt.items()))
    recorded = {r["video_id"]: r["score"] for r in figures["videos"]}
    assert float(scorer.score(path)) == pytest.approx(recorded[video_id], abs=1e-4)


@pytest.mark.slow
def test_shipped_model_reproduces_its_recorded_scores(rebuilt, figures):
    recorded = {r["video_id"]: r for r in figures["videos"]}
    assert set(rebuilt) <= set(recorded)
    label_off = [
        v for v, (label, _, _) in rebuilt.items() if not math.isclose(label, recorded[v]["label"], abs_tol=1e-6)
    ]
    assert not label_off, f"rebuilt VMAF labels differ from the recorded ones: {label_off[:5]}"
    mismatched = install.scores_match(
        {"videos": [recorded[v] for v in rebuilt]}, {v: s for v, (_, s, _) in rebuilt.items()}
    )
    assert not mismatched, mismatched[:5]
    if len(rebuilt) == len(recorded):  # the whole split was rebuilt: its figures from the new scores
        ids = sorted(rebuilt)
        again = install.held_out_figures(
            [rebuilt[v][1] for v in ids],
            [rebuilt[v][0] for v in ids],
            [recorded[v]["source_id"] for v in ids],
            [recorded[v]["codec"] for v in ids],
        )
        for key in FIGURE_KEYS:
            assert again[key] == pytest.approx(figures["held_out"][key], abs=1e-3), key


def test_predict_without_checkpoint_uses_the_bundle(rebuilt, figures, tmp_path, capsys):
    video = next(v for v in figures["videos"] if v["video_id"] in rebuilt)
    out = tmp_path / "scores.json"
    assert predict.main([rebuilt[video["video_id"]][2], f"--output={out}", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert (
        "# model: bundled default" in text
        and f"# score: {figures['predicts']}" in text
        and f"# compare: {figures['comparable']}" in text
    )
    result = json.loads(out.read_text())
    assert result["bundled"] is True and result["results"][0]["score"] == pytest.approx(video["score"], abs=1e-4)


def test_missing_bundle_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(pretrained, "PACKAGE_DIR", tmp_path / "pretrained")
    expected = str(tmp_path / "pretrained" / pretrained.BUNDLED_NAME)
    with pytest.raises(FileNotFoundError, match="no bundled model") as err:
        internvqa_jax.load()
    assert expected in str(err.value)
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")
    assert predict.main([str(video), "--no-progress"]) == predict.EXIT_CANNOT_RUN
    stderr = capsys.readouterr().err
    assert "cannot load the bundled model" in stderr and expected in stderr and "--checkpoint" in stderr


def test_bundle_is_small_and_packaged():
    bundle = pretrained.bundled_model_dir()
    assert install.check_size(bundle) < 8.0
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["internvqa_jax.pretrained"]
    package = bundle.parent
    shipped = {f for pattern in patterns for f in package.glob(pattern) if f.is_file()}
    files = {f for f in bundle.rglob("*") if f.is_file()}
    assert files and files == shipped, (
        f"bundle files not in the wheel's package data: {sorted(map(str, files - shipped))[:5]}"
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> dict:
    """A finished-looking training workdir whose test split is 2 demo sources x 3 H.264 CRFs: the
    bundled model as its export, report.json and a shard manifest (records only) naming the split."""
    from internvqa_jax.data import shards

    root = tmp_path_factory.mktemp("small_run")
    levels = {"h264": [20, 37, 51]}
    items = demo.build(str(root / "videos"), source_ids=["sk_grass", "sk_rocket"], levels=levels)
    records = [
        {
            "index": i,
            "video_id": it.video_id,
            "source_id": it.source_id,
            "codec": it.codec,
            "quality_param": it.quality_param,
            "label": it.label,
            "split": "test",
            "fold": None,
        }
        for i, it in enumerate(items)
    ]
    shard_dir = root / "shards"
    shard_dir.mkdir()
    manifest = {
        "format": shards.MANIFEST_FORMAT,
        "shards": [],
        "records": records,
        "config": {},
        "counts": {},
        "splits": {"train": ["sk_moon"], "test": ["sk_grass", "sk_rocket"]},
        "split_config": {"seed": 0},
    }
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    workdir = root / "work"
    shutil.copytree(
        pretrained.bundled_model_dir(),
        workdir / "export" / "student",
        ignore=shutil.ignore_patterns(pretrained.FIGURES_FILE),
    )
    config = {
        "job": "homologous",
        "seed": 3,
        "student": {"preset": "tiny"},
        "optim": {"max_steps": 7},
        "data": {"name": "demo", "shard_dir": str(shard_dir)},
    }
    (workdir / "report.json").write_text(
        json.dumps({"config": config, "jobs": {"distill": {"steps": 7, "test_from_step": 7}}, "test": {}})
    )
    return {"root": root, "workdir": workdir, "items": items, "levels": levels}


def test_install_scores_the_test_split_with_the_users_scorer(small_run):
    dest = small_run["root"] / "bundle"
    figures = install.install(
        str(small_run["workdir"]),
        videos_dir=str(small_run["root"] / "videos"),
        dest=dest,
        command="python -m internvqa_jax.train --seed=3",
    )
    assert figures == pretrained.read_figures(dest)
    assert [e["source_id"] for e in figures["test_sources"]] == ["sk_grass", "sk_rocket"]
    assert all(e["levels"] == small_run["levels"] for e in figures["test_sources"])
    assert (
        figures["train"]["seed"] == 3
        and figures["train"]["steps"] == 7
        and figures["train"]["command"].endswith("--seed=3")
    )
    scorer = internvqa_jax.load(dest)
    by_id = {v["video_id"]: v for v in figures["videos"]}
    for item in small_run["items"]:
        row = by_id[item.video_id]
        assert row["score"] == pytest.approx(float(scorer.score(item.path)), abs=1e-7)
        assert row["label"] == pytest.approx(item.label) and row["content_group"] == item.extra["content_group"]
    v = figures["videos"]
    expected = install.held_out_figures(
        [r["score"] for r in v], [r["label"] for r in v], [r["source_id"] for r in v], [r["codec"] for r in v]
    )
    for key in FIGURE_KEYS:
        assert figures["held_out"][key] == pytest.approx(expected[key]), key
    assert (
        figures["held_out"]["srcc_per_codec"] == pytest.approx(expected["srcc_per_codec"])
        and figures["held_out"]["within_source_sources"] == 2
    )
    # the package ships the folder: no writer's path inside, and the checksums still verify (it loaded)
    assert str(small_run["root"]) not in (dest / "params" / "commit_success.txt").read_text()
    assert "| all codecs | 6 |" in install.markdown_table(figures)


def test_install_rebuilds_missing_videos_identically_and_keeps_the_old_bundle_on_failure(small_run, monkeypatch):
    dest = small_run["root"] / "bundle2"
    first = install.install(str(small_run["workdir"]), videos_dir=str(small_run["root"] / "videos"), dest=dest)
    rebuilt = install.install(str(small_run["workdir"]), videos_dir=str(small_run["root"] / "no_videos"), dest=dest)
    assert [r["label"] for r in rebuilt["videos"]] == [
        r["label"] for r in first["videos"]
    ]  # encodes and VMAF are deterministic
    assert [r["score"] for r in rebuilt["videos"]] == pytest.approx([r["score"] for r in first["videos"]], abs=1e-6)
    before = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    monkeypatch.setattr(install, "rebuild_test_videos", lambda *a, **k: {})
    with pytest.raises(FileNotFoundError, match="test videos not found"):
        install.install(str(small_run["workdir"]), videos_dir=str(small_run["root"] / "no_videos"), dest=dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == before
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".bundle2")]  # no temp left


def test_refigure_rescores_the_shipped_weights_on_rebuilt_videos(small_run, capsys):
    from internvqa_jax.pretrained import __main__ as cli
    from internvqa_jax.pretrained import refigure

    dest = small_run["root"] / "bundle3"
    installed = install.install(str(small_run["workdir"]), videos_dir=str(small_run["root"] / "videos"), dest=dest)
    # Figures recorded on other data: other labels and scores, an older demo format.
    stale = json.loads((dest / pretrained.FIGURES_FILE).read_text())
    for row in stale["videos"]:
        row["label"], row["score"] = 0.5, 0.25
    stale["held_out"]["srcc"] = 0.0
    stale["data"]["format"] = demo.FORMAT_VERSION - 1
    (dest / pretrained.FIGURES_FILE).write_text(json.dumps(stale))
    params_before = sorted((p.name, p.stat().st_size) for p in (dest / "params").rglob("*") if p.is_file())

    again = refigure.refigure(dest, videos_dir=str(small_run["root"] / "no_videos"))  # rebuilt from test_sources
    assert again == pretrained.read_figures(dest)
    assert [r["label"] for r in again["videos"]] == [r["label"] for r in installed["videos"]]
    assert [r["score"] for r in again["videos"]] == pytest.approx([r["score"] for r in installed["videos"]], abs=1e-6)
    for key in FIGURE_KEYS:
        assert again["held_out"][key] == pytest.approx(installed["held_out"][key], abs=1e-6), key
    assert again["data"]["format"] == demo.FORMAT_VERSION
    assert (again["train"], again["test_sources"]) == (installed["train"], installed["test_sources"])
    assert (again["predicts"], again["comparable"]) == (installed["predicts"], installed["comparable"])
    assert sorted((p.name, p.stat().st_size) for p in (dest / "params").rglob("*") if p.is_file()) == params_before
    assert not [p for p in dest.iterdir() if ".tmp" in p.name]

    # The command: same figures, reusing the built videos this time, and the README table printed.
    assert cli.main(["refigure", f"--dest={dest}", f"--videos={small_run['root'] / 'videos'}"]) == 0
    assert "| all codecs | 6 |" in capsys.readouterr().out
    assert pretrained.read_figures(dest)["videos"] == again["videos"]


def test_show_prints_the_readme_table(capsys):
    from internvqa_jax.pretrained import __main__ as cli

    assert cli.main(["show"]) == 0
    out = capsys.readouterr().out
    held = pretrained.read_figures()["held_out"]
    assert f"| all codecs | {held['n']} | {held['srcc_cross_source']:.3f} | {held['plcc_cross_source']:.3f} |" in out
    assert cli.main(["install", "--workdir=/nonexistent/run"]) == 1
    assert "/nonexistent/run" in capsys.readouterr().err
