"""Official PyTorch checkpoint (any family with a layout module) -> Flax model directory.

    python -m weight_conversion.torch_to_flax --checkpoint SRC --out DIR \
        [--model-kwargs JSON | --preset NAME] [--num-frames N --img-size S] \
        [--arch auto|internvideo2|internvideo2_pretrain|videomamba] [--reset-head | --protocol NAME]

The family is recognised from the keys (or `--arch`) and its layout module converts
(`weight_conversion.conversion`). Every source tensor is either consumed or listed as deliberately
dropped; missing, unexpected or mis-shaped keys fail together in one error naming each key and
both shapes. Tensors are read, transformed and placed one at a time.

`--protocol internvqa-kvq` converts a released quality model as it is (the InternVQA authors' KVQ
baseline, a DeepSpeed `mp_rank_00_model_states.pt`): the head is kept as trained and the model
directory's `inference.json` names the authors' own test path, which `predict` and `evaluate`
then apply (`internvqa_jax.data.sampling.AUTHOR_PROTOCOLS`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from etils import epath

from internvqa_jax.data import sampling
from internvqa_jax.models import registry, saving
from weight_conversion.checkpoint_io import CheckpointError, is_remote
from weight_conversion.conversion import (
    RELEASED_MODEL_KWARGS,
    ConversionRequest,
    arch_choices,
    convert_checkpoint,
    converted_inference,
    return_freed_memory_promptly,
)


def save_model_dir(model, out: str, inference) -> str:
    """Writes the model directory at `out` (local or gs://; a remote one is written locally, then copied up)."""
    if not is_remote(out):
        return str(saving.save_model_dir(model, out, inference=inference))
    with tempfile.TemporaryDirectory() as tmp:
        local = saving.save_model_dir(model, os.path.join(tmp, "model"), inference=inference)
        upload_dir(local, epath.Path(out))
    return out


def upload_dir(local: str | os.PathLike, remote: epath.Path) -> None:
    """Copies a local folder to `remote`; its top-level files last, so a reader never sees a
    configuration without its parameters."""
    files = [
        os.path.relpath(os.path.join(folder, name), local) for folder, _, names in os.walk(local) for name in names
    ]
    for rel in sorted(files, key=lambda r: (os.sep not in r, r)):
        target = remote / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(os.path.join(local, rel)).copy(target, overwrite=True)


def parse_request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ConversionRequest:
    """The `ConversionRequest` the flags ask for (flag errors exit through `parser.error`)."""
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as err:
        parser.error(f"--model-kwargs is not valid JSON: {err}")
    if args.protocol and args.reset_head:
        parser.error("--protocol keeps the checkpoint's trained head; it cannot go with --reset-head")
    if args.protocol:
        # The released model's own settings, unless the flags say otherwise.
        kwargs = {**RELEASED_MODEL_KWARGS.get(args.protocol, {}), **kwargs}
    return ConversionRequest(
        arch=args.arch,
        preset=args.preset,
        model_kwargs=kwargs,
        num_frames=args.num_frames,
        img_size=args.img_size,
        reset_head=args.reset_head,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: convert and write a model directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help=".pt/.pth/.bin/.safetensors file, local or gs:// (read tensor by tensor with plain reads; "
        "a legacy non-zip .pt on gs:// is copied to a local temp file first)",
    )
    parser.add_argument(
        "--out", required=True, help="model directory to write, local or gs:// (gs://: written locally, then copied)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-kwargs", default=None, help="JSON of official constructor kwargs")
    group.add_argument("--preset", default=None, help=f"preset name, one of {registry.preset_names()}")
    parser.add_argument("--num-frames", type=int, default=None, help="target frames (position embeddings interpolated)")
    parser.add_argument(
        "--img-size", type=int, default=None, help="target image size (position embeddings interpolated)"
    )
    parser.add_argument("--arch", default="auto", choices=arch_choices())
    parser.add_argument("--reset-head", action="store_true", help="drop the checkpoint's head and initialise a new one")
    parser.add_argument(
        "--protocol",
        default=None,
        choices=sorted(sampling.AUTHOR_PROTOCOLS),
        help="the checkpoint is this released quality model: keep its trained head and score with its authors' test path",
    )
    args = parser.parse_args(argv)
    return_freed_memory_promptly()
    request = parse_request(args, parser)
    try:
        model, report = convert_checkpoint(args.checkpoint, request)
        inference = converted_inference(model.config, args.checkpoint, protocol=args.protocol)
    except (CheckpointError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = save_model_dir(model, args.out, inference)
    if report is not None:
        print(report.summary())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
