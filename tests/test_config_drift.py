"""Defaults live in YAML: where a constructor of rmlab's has a default for a key the default run's
config sets, the two agree, so reading either tells the truth (`python -m rmlab.train` with no
overrides). Keys that bind nowhere are caught by test_config (rmlab.preflight.check_keys)."""

import inspect

from omegaconf import OmegaConf

from rmlab.preflight import _bound_nodes

from conftest import compose_train


def drift(cfg) -> list[str]:
    """`path.key: YAML value != default in callable` for every literal YAML value that an rmlab
    callable's signature gives another default."""
    found = []
    for path, node, target in _bound_nodes(cfg):
        if not getattr(target, "__module__", "").startswith("rmlab."):
            continue  # torch, transformers, Lightning: their defaults are theirs
        parameters = inspect.signature(target).parameters
        for key in node:
            parameter = parameters.get(str(key))
            value = node._get_node(key)
            if parameter is None or parameter.default is inspect.Parameter.empty or value._is_interpolation():
                continue
            if OmegaConf.is_dict(value):  # a nested group (source, columns, balance): its own keys are checked
                continue
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value._value()
            default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
            if value != default:
                found.append(f"{path}.{key}: YAML {value!r} != default {parameter.default!r} in {target.__qualname__}")
    return found


# A data file (conf/data/*.yaml) may choose its own sizes (synthetic: max_length 256, batch_size 16):
# that is the data's choice, not drift. The shared data block of conf/train.yaml must agree with the
# signature, as a data file that sets nothing of its own shows (data=local).
DATA_FILE_CHOICES = ("data.max_length:", "data.batch_size:")


def test_the_default_run_config_agrees_with_the_signatures(tmp_path):
    assert [d for d in drift(compose_train([], tmp_path)) if not d.startswith(DATA_FILE_CHOICES)] == []
    local = drift(compose_train(["data=local", "data.path=pairs.jsonl"], tmp_path))
    assert local == ["data.path: YAML 'pairs.jsonl' != default None in PreferenceDataModule"]  # the override itself


def test_the_optimized_metric_is_checked_before_training(tmp_path):
    import pytest

    from rmlab.errors import ConfigError
    from rmlab.train import check_optimized_metric

    check_optimized_metric(compose_train([], tmp_path))  # val/acc
    with pytest.raises(ConfigError, match=r"^optimized_metric='acc': name a key of summary.json"):
        check_optimized_metric(compose_train(["optimized_metric=acc"], tmp_path))
    with pytest.raises(ConfigError, match=r"needs test_after_fit=true"):
        check_optimized_metric(compose_train(["optimized_metric=test/acc", "test_after_fit=false"], tmp_path))
