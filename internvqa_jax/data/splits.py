"""Content-separated splits: every content group lands in exactly one split (or fold).

Compressed-VQA datasets hold many encodes of each source; splitting by clip would put the same
content in train and test and inflate every correlation. Several sources may also be cut from one
original file (time windows, tiles, pans or zooms of one clip or photograph): those share a
*content group*, and a split that separated them would still test on content seen in training.
All functions here therefore assign *source ids* whole, and with `groups` (source id -> content
group) whole groups; they are seeded, so the same listing always gives the same split. Without
`groups` every source is its own group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")

# Videos a split needs to be scored: correlation metrics need at least 2 (pred, label) pairs
# (metrics.py), so a validation or test split of fewer videos fails the run at its first evaluation.
MIN_EVAL_VIDEOS = 2
EVAL_SPLITS = ("val", "test")


def size_problems(per_split: Mapping[str, int], minimum: int = MIN_EVAL_VIDEOS) -> list[str]:
    """One sentence per evaluation split with fewer than `minimum` videos (none when all are usable)."""
    return [
        f"split {name!r} has {int(per_split.get(name, 0))} video(s); training needs at least {minimum} to compute its "
        f"correlation metrics (change --val-fraction/--test-fraction or add sources)"
        for name in EVAL_SPLITS
        if int(per_split.get(name, 0)) < minimum
    ]


def check_sizes(per_split: Mapping[str, int], where: str, minimum: int = MIN_EVAL_VIDEOS) -> None:
    """Raises ValueError naming every evaluation split of `where` with fewer than `minimum` videos."""
    problems = size_problems(per_split, minimum)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def _unique_sorted(source_ids: Iterable[str]) -> list[str]:
    return sorted({str(s) for s in source_ids})


def _group_map(source_ids: Iterable[str], groups: Mapping[str, str] | None) -> dict[str, str]:
    """source -> group for every source (itself where `groups` has no entry or is None)."""
    groups = groups or {}
    return {s: str(groups.get(s, s)) for s in _unique_sorted(source_ids)}


def _per_source(group_of: Mapping[str, str], by_group: Mapping[str, Any]) -> dict[str, Any]:
    return {s: by_group[g] for s, g in group_of.items()}


def _take_count(num: int, fraction: float, keep_rest: int) -> int:
    """Sources for a split of `fraction`: at least 1 when there is room, leaving `keep_rest` behind."""
    if fraction <= 0 or num <= keep_rest:
        return 0
    return int(min(max(1, round(num * fraction)), num - keep_rest))


def named_test_split(
    source_ids: Iterable[str],
    test_sources: Sequence[str],
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Named `test_sources` form the test split; a seeded `val_fraction` of the rest is validation.

    With `groups`, every source sharing a content group with a named test source is test too, and
    validation takes whole groups. Sources named in `test_sources` but absent from `source_ids` are
    simply not assigned (a partial download still splits); see `missing_sources` to report them.
    """
    group_of = _group_map(source_ids, groups)
    test_groups = {group_of[str(s)] for s in test_sources if str(s) in group_of}
    rest = sorted(set(group_of.values()) - test_groups)
    rng = np.random.default_rng(seed)
    order = [rest[i] for i in rng.permutation(len(rest))]
    n_val = _take_count(len(rest), val_fraction, keep_rest=1)
    val = set(order[:n_val])
    by_group = {g: "test" if g in test_groups else "val" if g in val else "train" for g in set(group_of.values())}
    return _per_source(group_of, by_group)


def missing_sources(source_ids: Iterable[str], named: Sequence[str]) -> list[str]:
    """Names in `named` that no item carries."""
    present = {str(s) for s in source_ids}
    return sorted(str(s) for s in named if str(s) not in present)


def seeded_split(
    source_ids: Iterable[str],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Seeded train/val/test assignment of sources, by whole content group when `groups` is given.

    The fractions count groups (sources without `groups`); each non-empty fraction gets >= 1 group
    when possible. Returns source -> split.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"seeded_split: need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}"
        )
    group_of = _group_map(source_ids, groups)
    names = _unique_sorted(group_of.values())
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    n_test = _take_count(len(order), test_fraction, keep_rest=1)
    n_val = _take_count(len(order) - n_test, val_fraction, keep_rest=1)
    by_group = {
        g: "test" if pos < n_test else "val" if pos < n_test + n_val else "train" for pos, g in enumerate(order)
    }
    return _per_source(group_of, by_group)


def kfold(
    source_ids: Iterable[str], num_folds: int, seed: int = 0, groups: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Seeded k-fold over sources, by whole content group when `groups` is given: fold sizes differ
    by at most one group (source). Returns source -> fold."""
    group_of = _group_map(source_ids, groups)
    names = _unique_sorted(group_of.values())
    what = "content groups" if groups else "sources"
    if num_folds < 2:
        raise ValueError(f"kfold: num_folds must be >= 2, got {num_folds}")
    if num_folds > len(names):
        raise ValueError(f"kfold: {num_folds} folds need at least as many {what}, got {len(names)}")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    return _per_source(group_of, {g: pos % num_folds for pos, g in enumerate(order)})


def parse_split_name(name: str) -> tuple[str, int | None]:
    """Splits "train"/"val"/"test"/"all" or "fold<k>/train" / "fold<k>/test" into (part, fold)."""
    if name in SPLITS or name == "all":
        return name, None
    if name.startswith("fold") and "/" in name:
        fold_part, part = name.split("/", 1)
        try:
            fold = int(fold_part[4:])
        except ValueError:
            fold = -1
        if fold >= 0 and part in ("train", "test"):
            return part, fold
    raise ValueError(f"split {name!r} unknown; expected one of {SPLITS + ('all',)} or 'fold<k>/train', 'fold<k>/test'")


def select(records: Sequence[Mapping], name: str) -> list[int]:
    """Indices (`record["index"]`) of the records in split `name`; records carry "split" and "fold"."""
    part, fold = parse_split_name(name)
    if part == "all":
        return [int(r["index"]) for r in records]
    if fold is None:
        return [int(r["index"]) for r in records if r["split"] == part]
    if any(r.get("fold") is None for r in records):
        raise ValueError(f"split {name!r}: the shards were prepared without --folds")
    in_fold = [r for r in records if int(r["fold"]) == fold]
    if not in_fold:
        raise ValueError(f"split {name!r}: no record in fold {fold}")
    keep = in_fold if part == "test" else [r for r in records if int(r["fold"]) != fold]
    return [int(r["index"]) for r in keep]


def check_separation(records: Sequence[Mapping], key: str = "split") -> None:
    """Raises if any source, or any content group (records with "content_group"), appears under two
    values of `key` (a split or a fold)."""
    for field in ("source_id", "content_group"):
        seen: dict[str, object] = {}
        for r in records:
            if r.get(field) is None:
                continue
            name, val = r[field], r[key]
            if seen.setdefault(name, val) != val:
                what = "source" if field == "source_id" else "content group"
                raise ValueError(f"{what} {name!r} appears in {key} {seen[name]!r} and {val!r}")
