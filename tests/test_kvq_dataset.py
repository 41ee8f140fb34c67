"""KVQ's lister on a KVQ-shaped folder (label files of the challenge release, portrait videos), through prepare."""

from __future__ import annotations

import pytest
from scoring_helpers import make_lavfi_video

from internvqa_jax.data import prepare, shards
from internvqa_jax.data.datasets import get_dataset, kvq

ROWS = {
    "train": [("train/0001.mp4", 3.2), ("train/0002.mp4", 4.1), ("train/0003.mp4", 2.5)],
    "val": [("val/0101.mp4", 3.7)],
    "test": [("test/0201.mp4", 1.9)],
}


@pytest.fixture(scope="module")
def kvq_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kvq")
    sources = ("testsrc2", "mandelbrot", "life", "cellauto", "smptebars")
    for (split, rows), offset in zip(ROWS.items(), (0, 3, 4)):
        lines = []
        for i, (name, mos) in enumerate(rows):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            make_lavfi_video(root / name, sources[offset + i], seconds=0.4, size="72x128", fps=10)  # portrait
            lines.append(f"{name},{i % 9},{i % 3},{mos}")
        (root / f"{split}_split_v4_revise66_compete.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lister_keeps_the_published_split_and_mos(kvq_root):
    items = get_dataset("kvq").list_items(str(kvq_root))
    assert len(items) == 5 and not items.skipped
    by_id = {it.video_id: it for it in items}
    assert by_id["train/0002"].label == pytest.approx(4.1 / 5) and by_id["train/0002"].label_kind == "mos"
    assert {it.video_id: it.extra["published_split"] for it in items} == {
        n.rsplit(".", 1)[0]: split for split, rows in ROWS.items() for n, _ in rows
    }


def test_bad_rows_are_named(kvq_root, tmp_path):
    root = tmp_path / "kvq"
    (root / "train").mkdir(parents=True)
    (root / "train" / "0001.mp4").write_bytes((kvq_root / "train" / "0001.mp4").read_bytes())
    (root / "train_split.txt").write_text("train/0001.mp4,1,2,3.5\ntrain/missing.mp4,1,2,3.0\ntrain/0001.mp4,1,2,x\n")
    items = kvq.list_items(str(root))
    assert [it.video_id for it in items] == ["train/0001"]
    reasons = [s.reason for s in items.skipped]
    assert "not found" in reasons[0] and "is not a number" in reasons[1]
    with pytest.raises(ValueError, match="train_split.txt row 2: video 'train/missing.mp4' not found"):
        kvq.list_items(str(root), strict=True)
    with pytest.raises(FileNotFoundError, match="no KVQ label files"):
        kvq.list_items(str(tmp_path))


def test_prepare_kvq_command(kvq_root, tmp_path):
    out = tmp_path / "shards"
    argv = ["--dataset=kvq", f"--root={kvq_root}", f"--out={out}", "--frames=3", "--short-side=native"]
    assert prepare.main(argv) == 0
    manifest = shards.load_manifest(out)
    assert manifest["dataset"] == "kvq"
    split_of = {r["video_id"]: r["split"] for r in manifest["records"]}
    assert split_of == {n.rsplit(".", 1)[0]: split for split, rows in ROWS.items() for n, _ in rows}
    for r in manifest["records"]:
        assert (r["width"], r["height"]) == (72, 128)  # portrait, native
        assert r["stored_shape"][1:3] == [128, 72]
