"""`python -m rmlab.evaluate` on a real checkpoint: the run's own test split, a file with a `subset`
column, W&B offline read back, and the same report from 2 DDP processes as from one."""

import json
import subprocess
from pathlib import Path

import pytest

from rmlab.diagnostics.probes import PROBES
from rmlab.evaluate import evaluate

from conftest import compose_entry, run_cli
from wandb_offline import read_run

N_TEST = 17  # conftest.CLI_SMOKE's, odd: 2 DDP ranks get 9 each, one a padded duplicate that must not count twice


@pytest.fixture(scope="module")
def checkpoint(cli_smoke_run) -> tuple[Path, dict]:
    """The best checkpoint of the session's short CLI training, and its summary."""
    _, _, summary = cli_smoke_run
    assert summary["data/test/pairs"] == N_TEST
    return Path(summary["best_checkpoint"]), summary


@pytest.fixture(scope="module")
def evaluated(checkpoint, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m rmlab.evaluate ckpt=<checkpoint>` on the CPU (one process, W&B offline, the default precision):
    its run dir and the process. The CPU, as the DDP evaluation runs, to compare the two on any machine."""
    ckpt, _ = checkpoint
    out = tmp_path_factory.mktemp("evaluate") / "eval"
    return out, run_cli("rmlab.evaluate", [f"ckpt={ckpt}", "trainer.accelerator=cpu", f"hydra.run.dir={out}"], out.parent)


@pytest.mark.e2e
def test_training_writes_the_report_of_its_test_split(checkpoint):
    ckpt, summary = checkpoint
    run_dir = ckpt.parent.parent
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n"] == summary["data/test/pairs"] == N_TEST
    assert report["overall"]["acc"] == pytest.approx(summary["test/acc"], abs=1e-6)  # the module's own metric
    assert summary["test/bias/length_spearman"] == pytest.approx(report["length"]["length_spearman"], abs=1e-6)
    assert summary["test/probe/filler/acc"] == pytest.approx(report["probes"]["filler"]["acc"], abs=1e-6)
    for name in ("report.md", "reliability.png", "rewards.png", "length.png", "probes.png"):
        assert (run_dir / name).stat().st_size > 0, name


@pytest.mark.e2e
@pytest.mark.slow
def test_evaluate_cli_on_the_runs_own_test_split(checkpoint, evaluated):
    ckpt, summary = checkpoint
    out, result = evaluated
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == N_TEST and report["stage"] == "test"
    assert report["overall"]["acc"] == pytest.approx(summary["test/acc"], abs=1e-6)  # same model, same pairs
    assert set(report["probes"]) == set(PROBES)
    assert report["subset_column"] == "task" and sum(s["n"] for s in report["subsets"].values()) == N_TEST
    assert f"pairs {N_TEST}   acc " in result.stdout and f"bias report: {out / 'report.md'}" in result.stdout
    assert "Test metric" not in result.stdout + result.stderr  # the compact summary, not Lightning's table of every key
    assert (out / "report.md").read_text().startswith(f"# Bias report: {ckpt} on test data (precision 32-true)\n")
    assert "evaluating in precision 32-true\n" in result.stdout  # fp32 by default: an exported model's rewards

    [wandb_run] = (out / "wandb").glob("offline-run-*")
    logged = read_run(wandb_run)
    assert logged["summary"]["test/acc"] == pytest.approx(report["overall"]["acc"], abs=1e-6)
    assert logged["summary"]["test/probe/filler/acc"] == pytest.approx(report["probes"]["filler"]["acc"], abs=1e-6)
    assert logged["summary"]["test/bias/ece"] == pytest.approx(report["overall"]["ece"], abs=1e-6)
    [table] = (wandb_run / "files" / "media" / "table" / "test" / "tables").glob("probes_*.table.json")
    rows = json.loads(table.read_text())
    assert rows["columns"][:3] == ["probe", "n", "acc"]
    assert {row[0]: row[2] for row in rows["data"]} == pytest.approx({k: v["acc"] for k, v in report["probes"].items()})
    media = {p.parent.name + "/" + p.name.split("_")[0] for p in (wandb_run / "files" / "media").rglob("*.*")}
    assert {"tables/worst", "tables/length", "plots/probes", "plots/length"} <= media


@pytest.mark.e2e
def test_evaluate_a_file_with_a_subset_column(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    rows = [{"prompt": f"What is {a} + {b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}", "subset": "math"}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]]
    rows += [{"prompt": f"Say hello to {name}.", "chosen": f"Hello, {name}!", "rejected": "No.", "subset": "chat"}
             for name in ["Ann", "Bo", "Cy"]]
    rows = [{**row, "gap": 0.5} for row in rows]
    # A pair whose responses MiniLM reads alike (both emoji are [UNK]): set aside under skip, with its line.
    rows.insert(2, {"prompt": "Is the build green?", "chosen": "Build: \U0001F44D", "rejected": "Build: \U0001F44E",
                    "subset": "math", "gap": 0.5})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8-sig")  # with a byte-order mark
    out = tmp_path / "eval"
    # In this process (the command line of rmlab.evaluate: test_evaluate_cli_on_the_runs_own_test_split).
    evaluate(compose_entry("evaluate", [f"ckpt={ckpt}", "data=local", f"data.path={path}", "logger=csv",
                                        "data.columns.margin=gap", "data.on_bad_row=skip"], out))
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert report["n"] == 8  # the whole file, not a carved split
    [reject] = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["origin"] == f"{path} line 3" and "the same token ids" in reject["problem"]
    assert report["subset_column"] == "subset"
    assert {k: v["n"] for k, v in report["subsets"].items()} == {"chat": 3, "math": 5}
    assert report["overall"]["acc"] == pytest.approx((5 * report["subsets"]["math"]["acc"] + 3 * report["subsets"]["chat"]["acc"]) / 8)
    assert "## Accuracy by subset" in (out / "report.md").read_text()


def test_evaluate_refuses_a_missing_checkpoint(tmp_path):
    cfg = compose_entry("evaluate", [f"ckpt={tmp_path / 'nope.ckpt'}", "logger=csv"], tmp_path / "e")
    with pytest.raises(FileNotFoundError, match=f"ckpt='{tmp_path / 'nope.ckpt'}': no such file"):
        evaluate(cfg)
    assert not (tmp_path / "e" / "report.json").exists()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_evaluation_gives_the_single_process_report(checkpoint, evaluated, tmp_path):
    ckpt, _ = checkpoint
    single_out, single_result = evaluated  # one process
    assert single_result.returncode == 0, single_result.stderr[-3000:]
    out = tmp_path / "eval2"
    result = run_cli("rmlab.evaluate", [f"ckpt={ckpt}", "logger=csv", "trainer.accelerator=cpu", "trainer.devices=2",
                                        f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # really two processes
    single, ddp = (json.loads((d / "report.json").read_text()) for d in (single_out, out))
    assert ddp["n"] == single["n"] == N_TEST  # gathered from both ranks, the padded duplicate counted once
    for key in ("acc", "loss", "margin", "ece"):
        assert ddp["overall"][key] == pytest.approx(single["overall"][key], abs=1e-5), key
    assert ddp["length"]["length_spearman"] == pytest.approx(single["length"]["length_spearman"], abs=1e-5)
    # Each process scores its probe rewrites in batches of similar lengths, so the two runs batch them differently:
    # the same rewards reach the same rewrites (a probe's shift is the mean reward change its rewrites cause).
    assert {k: (v["n"], round(v["acc"], 5)) for k, v in ddp["probes"].items()} == \
        {k: (v["n"], round(v["acc"], 5)) for k, v in single["probes"].items()}
    for name, probe in single["probes"].items():
        assert ddp["probes"][name]["shift"] == pytest.approx(probe["shift"], abs=1e-4), name


def test_a_checkpoint_that_would_build_foreign_code_is_refused_unless_trusted(tmp_path):
    """weights_only=True keeps pickled code out; the stored config's _target_s are the other way in."""
    import torch

    from rmlab.errors import ConfigError
    from rmlab.evaluate import load_checkpoint

    cases = {
        "foreign.ckpt": ({"model": {"_target_": "os.system", "command": "echo hi"}}, r"builds \['os.system'\]"),
        "remote.ckpt": ({"model": {"_target_": "rmlab.model.module.RewardModel",
                                   "backbone": {"name_or_path": "some/hub-model", "trust_remote_code": True}}},
                        "loads its backbone with trust_remote_code=true"),
    }
    for name, (config, problem) in cases.items():
        torch.save({"rmlab_config": config, "state_dict": {}}, tmp_path / name)
        with pytest.raises(ConfigError, match=problem + ".*add trust_remote_code=true"):
            load_checkpoint(str(tmp_path / name))
        assert load_checkpoint(str(tmp_path / name), trust_remote_code=True)["rmlab_config"] == config
