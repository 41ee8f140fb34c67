"""Content-separated splits: every source content lands in exactly one split (or fold).

Compressed-VQA datasets hold many encodes of each source; splitting by clip would put the same
content in train and test and inflate every correlation. All functions here therefore assign
*source ids* and are seeded, so the same listing always gives the same split.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

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


def _take_count(num: int, fraction: float, keep_rest: int) -> int:
    """Sources for a split of `fraction`: at least 1 when there is room, leaving `keep_rest` behind."""
    if fraction <= 0 or num <= keep_rest:
        return 0
    return int(min(max(1, round(num * fraction)), num - keep_rest))


def named_test_split(source_ids: Iterable[str], test_sources: Sequence[str], val_fraction: float = 0.1, seed: int = 0) -> dict[str, str]:
    """Named `test_sources` form the test split; a seeded `val_fraction` of the rest is validation.

    Sources named in `test_sources` but absent from `source_ids` are simply not assigned (a partial
    download still splits); see `missing_sources` to report them.
    """
    sources = _unique_sorted(source_ids)
    test = {str(s) for s in test_sources}
    rest = [s for s in sources if s not in test]
    rng = np.random.default_rng(seed)
    order = [rest[i] for i in rng.permutation(len(rest))]
    n_val = _take_count(len(rest), val_fraction, keep_rest=1)
    val = set(order[:n_val])
    return {s: "test" if s in test else "val" if s in val else "train" for s in sources}


def missing_sources(source_ids: Iterable[str], named: Sequence[str]) -> list[str]:
    """Names in `named` that no item carries."""
    present = {str(s) for s in source_ids}
    return sorted(str(s) for s in named if str(s) not in present)


def seeded_split(source_ids: Iterable[str], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Seeded train/val/test assignment of sources; each non-empty fraction gets >= 1 source when possible."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"seeded_split: need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}")
    sources = _unique_sorted(source_ids)
    rng = np.random.default_rng(seed)
    order = [sources[i] for i in rng.permutation(len(sources))]
    n_test = _take_count(len(order), test_fraction, keep_rest=1)
    n_val = _take_count(len(order) - n_test, val_fraction, keep_rest=1)
    assignment = {}
    for pos, s in enumerate(order):
        assignment[s] = "test" if pos < n_test else "val" if pos < n_test + n_val else "train"
    return assignment


def kfold(source_ids: Iterable[str], num_folds: int, seed: int = 0) -> dict[str, int]:
    """Seeded k-fold over sources: fold sizes differ by at most one source."""
    sources = _unique_sorted(source_ids)
    if num_folds < 2:
        raise ValueError(f"kfold: num_folds must be >= 2, got {num_folds}")
    if num_folds > len(sources):
        raise ValueError(f"kfold: {num_folds} folds need at least as many sources, got {len(sources)}")
    rng = np.random.default_rng(seed)
    order = [sources[i] for i in rng.permutation(len(sources))]
    return {s: pos % num_folds for pos, s in enumerate(order)}


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
    """Raises if any source appears under two values of `key` (a split or a fold)."""
    seen: dict[str, object] = {}
    for r in records:
        src, val = r["source_id"], r[key]
        if seen.setdefault(src, val) != val:
            raise ValueError(f"source {src!r} appears in {key} {seen[src]!r} and {val!r}")
