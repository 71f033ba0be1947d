"""Configs for scale-out: multi-node DDP under torchrun and SLURM (rank layout read from the
launcher's environment, run dir pinned), FSDP and DeepSpeed strategies."""

import pytest
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import FSDPStrategy
from lightning_utilities.core.rank_zero import rank_zero_only

from rmlab.launch import check_shared_run_dir

from conftest import compose_train

TORCHRUN = {"TORCHELASTIC_RUN_ID": "rm1", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1",
            "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
SLURM = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1", "SLURM_JOB_NAME": "rmlab", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "77"}


@pytest.fixture(autouse=True)
def restore_process_rank():
    """Building a Trainer as rank 3 sets Lightning's process-wide rank; later tests in this process
    would then log and save nothing (rank_zero_only). Put it back."""
    rank = rank_zero_only.rank
    yield
    rank_zero_only.rank = rank


# 2 nodes x 2 processes; CPU so that the Trainer can be built here (on a cluster: gpu, 8 devices).
MULTINODE = ["trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2",
             "trainer.precision=32-true"]


@pytest.mark.parametrize("launcher,env,environment", [("torchrun", TORCHRUN, TorchElasticEnvironment),
                                                      ("slurm", SLURM, SLURMEnvironment)])
def test_multinode_rank_layout_comes_from_the_launcher(launcher, env, environment, monkeypatch, tmp_path):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "shared-run"
    cfg = compose_train([*MULTINODE, f"hydra.run.dir={run_dir}"], run_dir)
    check_shared_run_dir()  # pinned: accepted
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer.strategy.cluster_environment, environment)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (4, 3, 1, 1)
    assert trainer.default_root_dir == str(run_dir)  # every rank writes into the one pinned dir


@pytest.mark.parametrize("env", [TORCHRUN, SLURM], ids=["torchrun", "slurm"])
def test_an_unpinned_run_dir_under_a_cluster_launcher_is_refused(env, monkeypatch, tmp_path):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    compose_train(MULTINODE, tmp_path)
    with pytest.raises(ValueError, match="hydra.run.dir=/shared/runs/"):
        check_shared_run_dir()


def test_fsdp_config_builds_the_strategy_with_a_size_based_wrap_policy(tmp_path):
    cfg = compose_train(["trainer=fsdp"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"].keywords == {"min_num_params": 1_000_000}
    assert strategy.sharding_strategy.name == "FULL_SHARD"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_name_the_missing_package(stage, tmp_path):
    cfg = compose_train([f"trainer=deepspeed_zero{stage}", "trainer.accelerator=cpu", "trainer.devices=1",
                         "trainer.precision=32-true"], tmp_path)
    assert cfg.trainer.strategy == f"deepspeed_stage_{stage}"
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="pip install -U deepspeed"):
            instantiate(cfg.trainer, logger=False, callbacks=[])
