"""Will RL exploit this reward model? `python -m rmlab.audit ckpt=<ckpt | export> data.path=<response sets>`.

Scores every response of every set (a prompt and K responses with gold scores) with the reward model,
or with each member of an ensemble, combined by each of `ensemble.aggregations`: separately trained
models (`ckpt=[a,b,c]`: member_1, member_2, ...) or the k heads of one checkpoint trained with
`ensemble=heads` (head_0, ..., head_{k-1}), and
writes into the run dir:
- the best-of-N audit (rmlab.diagnostics.bon): for N = 1, 2, 4, ... the expected gold score of the
  response the proxy ranks first among N drawn from a set, exact over all subsets, beside the gold,
  pick-the-longest and random curves; where each curve peaks, its gap to gold, Gao et al.'s fit
  (arXiv 2210.10760), and the top picks that cost the most gold;
- best-of-K metrics on the whole sets (rmlab.diagnostics.sets): RewardBench 2 accuracy, Kendall tau,
  Spearman, regret, and how often the top pick is the longest response;
report.json, report.md, bon.png, rewards.jsonl, summary.json, and the same to W&B (offline by default).
Gold: the data's scores (`gold=data`: the synthetic generator's grade, AlpacaEval's judged win
probability) or a stronger reward model (`gold=<ckpt | export>`, Gao et al.'s synthetic setup).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from rmlab import strict_json
from rmlab.config import CONFIG_DIR
from rmlab.data.formats import template_messages
from rmlab.data.set_reader import read_sets
from rmlab.data.sources import LocalFiles
from rmlab.diagnostics import bon
from rmlab.diagnostics.sets import longest_pick_rates, random_baseline, set_metrics
from rmlab.errors import ConfigError
from rmlab.launch import short_user_errors
from rmlab.model.ensemble import aggregate
from rmlab.trained import Scorer, score_sequences, tokenizing_function, write_rows

log = logging.getLogger(__name__)


def load_sets(data: DictConfig) -> tuple[list[dict], dict]:
    """The response sets to audit and the reader's stats: a file (`data.path`, read whole) or a split
    (`data.split`) of a source (`data=alpacaeval_sets`, `data=synthetic_sets`, a hub config), read by
    rmlab.data.set_reader.read_sets with every bad-row rule (data.on_bad_row). Raises DataError for
    a bad row under on_bad_row=error, ConfigError when neither a path nor a source is given."""
    if data.get("path"):
        raw, origin, split = LocalFiles(None, test_path=data.path)()["test"], str(data.path), "test"
    elif data.get("source"):
        source, split = instantiate(data.source), data.get("split", "test")
        raw, origin = source()[split], source.describe(split)
        if raw is None:
            raise ConfigError(f"data.source has no {split} split; choose another with data.split=...")
    else:
        raise ConfigError("say which response sets to audit: data.path=<sets file>, or data=<a response-set config> "
                          "such as data=alpacaeval_sets or data=synthetic_sets")
    options = OmegaConf.to_container(data, resolve=True)
    read = read_sets(raw, origin, split, options.get("format") or "auto", options.get("columns"), options.get("score_key"),
                     options.get("score_weights"), options.get("on_bad_row") or "error", options.get("turn_markers"))
    sets = [{"prompt": template_messages(row["prompt"]), "responses": row["responses"], "scores": row["scores"],
             "origin": row["origin"]} for row in read.sets]
    return sets, read.stats


def score_sets(model_path: str, sets: list[dict], cfg: DictConfig, all_heads: bool = False) -> list[list]:
    """The reward of every response of every set ([set][response]) by one model (checkpoint or export).
    all_heads: one such list per reward head ([head][set][response]; one for a single-head model)."""
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    scorer = Scorer(model_path, cfg.trust_remote_code, device)
    encode = tokenizing_function(scorer.tokenizer, scorer.settings)
    sequences = [encode(s["prompt"], response)["chosen_input_ids"] for s in sets for response in s["responses"]]
    scored = score_sequences(scorer, sequences, cfg.batch_size, cfg.sort_window, cfg.precision, all_heads)
    if all_heads:
        return [regroup([rewards[h] for rewards in scored], sets) for h in range(scorer.heads)]
    return regroup(scored, sets)


def regroup(flat: list[float], sets: list[dict]) -> list[list[float]]:
    """Rewards in the order of every set's responses -> [set][response]."""
    values = iter(flat)
    return [[next(values) for _ in s["responses"]] for s in sets]


def ensemble_proxies(members: dict[str, list[list[float]]], aggregations: list[str], coef: float) -> dict[str, list]:
    """{member name: rewards} and, for two or more members, one aggregated proxy per aggregation
    (rmlab.model.ensemble.aggregate), each [set][response]; one member is the `proxy`."""
    if len(members) == 1:
        return {"proxy": next(iter(members.values()))}
    proxies, rewards = dict(members), list(members.values())
    for how in aggregations:
        proxies[how] = [aggregate(torch.tensor([m[s] for m in rewards]), how, coef).tolist() for s in range(len(rewards[0]))]
    return proxies


def uncertainty(members: list[list[list[float]]], gold: list[list[float]]) -> dict[str, float]:
    """The ensemble's per-response std across members (population), its mean, and its Spearman
    correlation with the error |z(mean reward) - z(gold)| (both z-scored within the set; sets
    where either is constant left out)."""
    stds, errors = [], []
    for s, g in enumerate(gold):
        rewards = np.array([m[s] for m in members])
        mean, g = rewards.mean(axis=0), np.asarray(g, dtype=float)
        if mean.std() == 0 or g.std() == 0:
            continue
        stds += rewards.std(axis=0).tolist()
        errors += np.abs((mean - mean.mean()) / mean.std() - (g - g.mean()) / g.std()).tolist()
    return {"mean_std": float(np.mean(stds)) if stds else float("nan"),
            "std_error_spearman": float(stats.spearmanr(stds, errors).statistic) if len(stds) > 2 else float("nan")}


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Run the audit of cfg.ckpt on cfg.data.path; write the reports into the run dir; return report.json's content."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sets, read_stats = load_sets(cfg.data)
    where = cfg.data.get("path") or f"{cfg.data.source._target_.rsplit('.', 1)[-1]}[{cfg.data.get('split', 'test')}]"
    checkpoints = [cfg.ckpt] if isinstance(cfg.ckpt, str) else list(cfg.ckpt)
    if len(checkpoints) == 1:  # a checkpoint of k heads (ensemble=heads): its heads are the members
        members = {f"head_{h}": rewards for h, rewards in enumerate(score_sets(checkpoints[0], sets, cfg, all_heads=True))}
    else:  # separately trained models, each scoring as it does alone (a k-head one: its own aggregation)
        members = {f"member_{i}": score_sets(path, sets, cfg) for i, path in enumerate(checkpoints, start=1)}
    gold = [s["scores"] for s in sets] if cfg.gold == "data" else score_sets(cfg.gold, sets, cfg)
    lengths = [[len(r) for r in s["responses"]] for s in sets]  # characters
    proxies = ensemble_proxies(members, list(cfg.ensemble.aggregations), cfg.ensemble.uncertainty_coef)

    curves = bon.bon_audit(proxies, gold, lengths, cfg.bon.max_n, cfg.bon.drop_tolerance)
    main_proxy = "proxy" if "proxy" in proxies else "mean"
    report = {
        "ckpt": checkpoints, "gold": cfg.gold, "data": where, "read": read_stats,
        "responses": sum(len(s["responses"]) for s in sets), "best_of_n": curves,
        "set_metrics": {**{name: set_metrics(p, gold) for name, p in proxies.items()},
                        "longest": set_metrics(lengths, gold), "random": random_baseline(gold)},
        "longest_pick": {name: longest_pick_rates(p, gold, lengths) for name, p in proxies.items()},
        "overrated": bon.overrated(proxies[main_proxy], gold, [s["responses"] for s in sets], cfg.bon.overrated),
    }
    if len(members) > 1:
        report["uncertainty"] = uncertainty(list(members.values()), gold)
    for row in report["overrated"]:
        row["origin"] = sets[row["set"]]["origin"]
    title = f"Best-of-N audit: {', '.join(checkpoints)} on {where} (gold: {cfg.gold})"
    write(run_dir, report, sets, proxies, gold, title)
    log_wandb(cfg, report, title)
    return report


def summary_keys(report: dict) -> dict[str, float]:
    """Flat summary.json / W&B summary keys: bon/<curve>/<field>, sets/<scorer>/<metric>, uncertainty/<field>."""
    out = {"bon/max_n": report["best_of_n"]["max_n"], "bon/sets": report["best_of_n"]["sets"]}
    for name, summary in report["best_of_n"]["summary"].items():
        out.update({f"bon/{name}/{key}": float(value) for key, value in summary.items()})
    for name, metrics in report["set_metrics"].items():
        out.update({f"sets/{name}/{key}": float(value) for key, value in metrics.items()})
    for name, rates in report["longest_pick"].items():
        out.update({f"sets/{name}/{key}": value for key, value in rates.items()})
    out.update({f"uncertainty/{key}": value for key, value in report.get("uncertainty", {}).items()})
    return out


def write(run_dir: Path, report: dict, sets: list[dict], proxies: dict, gold: list, title: str) -> None:
    """report.json, report.md, bon.png, summary.json and rewards.jsonl (every response's rewards and gold)."""
    (run_dir / "report.json").write_text(strict_json.dumps(report, indent=2))
    (run_dir / "summary.json").write_text(strict_json.dumps(summary_keys(report), indent=2))
    table = {**report["set_metrics"]}
    table["random"] = {key: table["random"].get(key, float("nan")) for key in table["longest"]}
    (run_dir / "report.md").write_text(bon.to_markdown(report["best_of_n"], table, report["overrated"], title))
    bon.plot(report["best_of_n"], str(run_dir / "bon.png"), title)
    write_rows(str(run_dir / "rewards.jsonl"), [
        {"origin": s["origin"], "gold": gold[i], **{name: p[i] for name, p in proxies.items()}} for i, s in enumerate(sets)])
    log.info("best-of-N audit of %d sets: %s; report: %s", report["read"]["sets"], {
        name: f"peak at N={s['peak_n']}, gap to gold {s['gap_to_gold_at_max_n']:.3f}" + (" (TURNS DOWN)" if s["turns_down"] else "")
        for name, s in report["best_of_n"]["summary"].items()}, run_dir / "report.md")


def log_wandb(cfg: DictConfig, report: dict, title: str) -> None:
    """The curves as a W&B line plot, the over-rated picks as a table, the summary keys (logger: wandb, offline by default)."""
    if not cfg.get("logger"):
        return
    import wandb

    run = instantiate(cfg.logger).experiment
    try:
        curves = report["best_of_n"]
        run.log({"bon/curves": wandb.plot.line_series(xs=curves["kl"], ys=list(curves["curves"].values()),
                                                      keys=list(curves["curves"]), title=title, xname="best-of-N KL (nats)"),
                 "bon/overrated": wandb.Table(columns=list(report["overrated"][0]),
                                              data=[list(row.values()) for row in report["overrated"]])})
        run.summary.update(summary_keys(report))
    finally:
        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="audit")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> None:
    audit(cfg)


if __name__ == "__main__":
    main()
