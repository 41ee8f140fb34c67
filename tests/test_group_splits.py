"""Splits by content group: every source cut from one original file lands in one split or fold."""

from __future__ import annotations

import numpy as np
import pytest

from internvqa_jax.data import prepare, splits
from internvqa_jax.data.records import VideoItem


def grouped_sources(num_groups: int = 12) -> dict[str, str]:
    """source -> group, groups of 1 to 5 sources (like cuts of one clip or moves over one still)."""
    groups = {}
    for g in range(num_groups):
        for k in range(1 + g % 5):
            groups[f"file{g:02d}_cut{k}"] = f"file{g:02d}"
    return groups


def split_of_groups(assignment: dict[str, str], groups: dict[str, str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for source, part in assignment.items():
        seen.setdefault(groups[source], set()).add(part)
    return seen


def test_seeded_split_keeps_every_group_in_one_split():
    groups = grouped_sources()
    for seed in range(20):
        a = splits.seeded_split(list(groups), 0.1, 0.2, seed=seed, groups=groups)
        assert set(a) == set(groups)
        assert all(len(parts) == 1 for parts in split_of_groups(a, groups).values()), seed
        # The fractions count groups: 12 groups -> 2 test, 1 val (>= 1 each), 9 train.
        per_group = {g: next(iter(p)) for g, p in split_of_groups(a, groups).items()}
        assert sorted(per_group.values()).count("test") == 2 and sorted(per_group.values()).count("val") == 1


def test_seeded_group_split_repeats_with_its_seed_and_changes_with_another():
    groups = grouped_sources()
    a = splits.seeded_split(list(groups), 0.1, 0.2, seed=3, groups=groups)
    assert a == splits.seeded_split(
        list(reversed(list(groups))), 0.1, 0.2, seed=3, groups=dict(reversed(list(groups.items())))
    )
    assert any(a != splits.seeded_split(list(groups), 0.1, 0.2, seed=s, groups=groups) for s in (4, 5, 6))


def test_without_groups_each_source_is_its_own_group():
    sources = [f"content{i:02d}" for i in range(20)]
    for seed in (0, 1, 7):
        plain = splits.seeded_split(sources, 0.1, 0.2, seed=seed)
        assert plain == splits.seeded_split(sources, 0.1, 0.2, seed=seed, groups={s: s for s in sources})
        assert splits.kfold(sources, 4, seed) == splits.kfold(sources, 4, seed, groups={s: s for s in sources})


def test_named_test_source_takes_its_whole_group_and_val_takes_whole_groups():
    groups = grouped_sources()
    a = splits.named_test_split(list(groups), ["file04_cut2", "not_there"], val_fraction=0.2, seed=1, groups=groups)
    assert {s for s, v in a.items() if v == "test"} == {s for s, g in groups.items() if g == "file04"}
    assert all(len(parts) == 1 for parts in split_of_groups(a, groups).values())
    val_groups = {groups[s] for s, v in a.items() if v == "val"}
    assert len(val_groups) == 2 and "file04" not in val_groups


def test_kfold_by_group():
    groups = grouped_sources(10)
    folds = splits.kfold(list(groups), 3, seed=2, groups=groups)
    per_group: dict[str, set[int]] = {}
    for s, f in folds.items():
        per_group.setdefault(groups[s], set()).add(f)
    assert all(len(f) == 1 for f in per_group.values())
    sizes = sorted([next(iter(f)) for f in per_group.values()].count(k) for k in range(3))
    assert sizes == [3, 3, 4]  # balanced in groups, not sources
    with pytest.raises(ValueError, match="at least as many content groups"):
        splits.kfold(list(groups), 11, groups=groups)


def test_check_separation_names_a_group_across_splits():
    records = [
        {"source_id": "a_cut0", "content_group": "a.mp4", "split": "train"},
        {"source_id": "a_cut1", "content_group": "a.mp4", "split": "test"},
    ]
    with pytest.raises(ValueError, match="content group 'a.mp4' appears in split 'train' and 'test'"):
        splits.check_separation(records)
    splits.check_separation([{**r, "content_group": r["source_id"]} for r in records])  # distinct groups pass


def flat_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake decoder: constant frames (splits do not look at pixels)."""
    return np.zeros((config.frames, 8, 8, 3), np.uint8), {}


def grouped_items() -> list[VideoItem]:
    items = []
    for source, group in grouped_sources().items():
        for q in range(2):
            items.append(
                VideoItem(
                    f"/fake/{source}_{q}.mp4", f"{source}_{q}", source, 0.5, "vmaf", extra={"content_group": group}
                )
            )
    # A dataset row without a group: its source is its own group.
    items.append(VideoItem("/fake/lone.mp4", "lone_0", "lone", 0.5, "vmaf"))
    return items


def test_prepare_splits_by_group_and_records_groups_in_the_manifest(tmp_path):
    items = grouped_items()
    config = prepare.PrepareConfig(frames=1, short_side=None, records_per_shard=16)
    manifest = prepare.prepare_items(
        items, tmp_path, config, prepare.SplitConfig(folds=3, seed=5), loader=flat_loader, progress=False
    )
    records = manifest["records"]
    assert {r["content_group"] for r in records if r["source_id"] == "lone"} == {"lone"}
    assert all(r["content_group"] == r["source_id"].split("_")[0] for r in records if r["source_id"] != "lone")
    splits.check_separation(records)
    splits.check_separation(records, "fold")
    groups = {r["content_group"] for r in records}
    assert sorted(g for part in manifest["split_groups"].values() for g in part) == sorted(groups)
    counts = manifest["counts"]
    assert counts["groups_per_split"] == {k: len(v) for k, v in manifest["split_groups"].items()}
    assert sum(counts["sources_per_split"].values()) == len({it.source_id for it in items})
    assert "content groups per split" in prepare.summary(manifest)
    # Same seed, same split; the group assignment is what prepare recorded.
    again, _, _ = prepare.assign_splits(items, prepare.SplitConfig(folds=3, seed=5))
    assert again == {r["source_id"]: r["split"] for r in records}


def test_items_of_one_source_must_agree_on_the_group():
    items = grouped_items()[:2]
    bad = [
        items[0],
        VideoItem(
            items[1].path, items[1].video_id, items[1].source_id, 0.5, "vmaf", extra={"content_group": "other.png"}
        ),
    ]
    with pytest.raises(
        ValueError, match="source 'file00_cut0': its items name content groups 'file00' and 'other.png'"
    ):
        prepare.content_groups(bad)
