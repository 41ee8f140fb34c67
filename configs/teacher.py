"""Fine-tune the InternVideo2 teacher alone as a quality regressor (no student).

Its export (`WORKDIR/export/teacher`) can later serve as a frozen teacher:
`configs/homologous.py:teacher_mode=frozen,teacher_init=WORKDIR/export/teacher`.
"""

from __future__ import annotations

import ml_collections

from configs import common, homologous


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Teacher-only config; same preset keys as the homologous config (student ones are ignored)."""
    args = common.parse_arg(arg)
    c = common.base_config()
    c.job = "teacher"
    c.distill = False
    c.run_baseline = False
    data = args.get("data", "demo")
    common.apply_dataset_preset(c, data)
    if data == "demo" and "teacher" not in args:
        homologous.demo_models(c)
    c.loss.feature = 0.0
    c.loss.student_mse = 0.0
    common.apply_args(c, args)
    return c
