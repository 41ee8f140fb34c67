"""Fine-tune the InternVideo2 teacher alone as a quality regressor (no student, no distillation).

No arg: the demo teacher of configs/homologous.py on the demo data. Its export
(`WORKDIR/export/teacher`) can later serve as a frozen teacher:
`configs/homologous.py:teacher_mode=frozen,teacher_init=WORKDIR/export/teacher`.
"""

from __future__ import annotations

import ml_collections

from configs import common, homologous


def _teacher_only(c: ml_collections.ConfigDict) -> None:
    c.distill = False
    c.run_baseline = False
    c.loss.feature = 0.0
    c.loss.student_mse = 0.0


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Teacher-only config; same preset keys as the homologous config (student ones are ignored)."""
    return common.build_config(
        arg, "teacher", homologous.demo_models, job_settings=_teacher_only, demo_unless=("teacher",)
    )
