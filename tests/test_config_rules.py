"""`training.config_rules.check_config`: every rule a training config must follow, one test each.

A run checks them all before it touches data or builds a model.
"""

import os

import pytest
from test_train_support import tiny_config

from internvqa_jax.training import config_rules


def check(num_devices: int = 1, **fields) -> None:
    config_rules.check_config(tiny_config("unused", **fields), num_devices=num_devices)


def test_the_shipped_configs_pass():
    from configs import heterogeneous, homologous, teacher

    for module in (homologous, heterogeneous, teacher):
        config_rules.check_config(module.get_config())
    config_rules.check_config(homologous.get_config("teacher=1B,student=B14,data=waterloo_ivc4k,teacher_mode=frozen"))


def test_job():
    with pytest.raises(ValueError, match="config.job: expected one of .*got 'distillation'"):
        check(job="distillation")


def test_teacher_mode():
    with pytest.raises(ValueError, match="config.teacher.mode: expected one of .*got 'pretrained'"):
        check(teacher__mode="pretrained")


def test_teacher_epochs():
    with pytest.raises(ValueError, match="config.teacher.epochs: expected >= 0"):
        check(teacher__mode="staged", teacher__epochs=-1.0)


def test_teacher_trainable():
    with pytest.raises(ValueError, match="config.teacher.trainable: expected 'authors' or 'all', got 'some'"):
        check(teacher__trainable="some")


def test_cache_needs_a_frozen_teacher():
    with pytest.raises(ValueError, match="cache_features=True needs config.teacher.mode='frozen' or 'staged'"):
        check(teacher__mode="cotrain", teacher__cache_features=True)
    check(teacher__mode="frozen", teacher__cache_features=True)
    check(teacher__mode="cotrain", teacher__cache_features=True, job="teacher")  # the teacher job caches nothing


def test_cache_refuses_token_distillation():
    with pytest.raises(ValueError, match="token distillation"):
        check(teacher__mode="frozen", teacher__cache_features=True, loss__token=0.5)


def test_cache_views():
    with pytest.raises(ValueError, match="config.teacher.cache_views: expected >= 1"):
        check(teacher__mode="staged", teacher__cache_features=True, teacher__cache_views=0)


def test_batch_divides_by_devices():
    with pytest.raises(ValueError, match="config.optim.batch_size=6 must divide by the 4 devices"):
        check(num_devices=4, optim__batch_size=6)
    check(num_devices=3, optim__batch_size=6)


def test_ema_decay():
    with pytest.raises(ValueError, match="config.optim.ema_decay"):
        check(optim__ema_decay=1.0)


def test_test_from():
    with pytest.raises(ValueError, match="config.checkpoint.test_from: expected 'best_val' or 'last', got 'newest'"):
        check(checkpoint__test_from="newest")


def test_compute_dtype():
    with pytest.raises(ValueError, match="config.compute_dtype: unknown 'float8'"):
        check(compute_dtype="float8")


def test_token_mask_ratio():
    with pytest.raises(ValueError, match=r"config.loss.token_mask_ratio: expected a fraction in \[0, 1\)"):
        check(loss__token_mask_ratio=1.0)


def test_loss_weights_cover_the_loss_terms():
    from internvqa_jax import losses

    c = tiny_config("unused")
    assert set(losses.LOSS_TERMS) <= set(c.loss)
    with c.unlocked():
        del c.loss["token"]
    with pytest.raises(ValueError, match=r"config.loss: missing the weight\(s\) \['token'\]"):
        config_rules.check_config(c, num_devices=1)


def test_a_run_checks_before_any_work(tmp_path):
    """A bad config fails before the workdir or the data exist."""
    from internvqa_jax import train

    workdir = tmp_path / "w"
    with pytest.raises(ValueError, match="config.teacher.mode"):
        train.run(tiny_config(str(tmp_path / "no_shards"), teacher__mode="pretrained"), str(workdir))
    assert not os.path.exists(workdir)
