"""`python -m rmlab.bench.gpu_check` (scripts/gpu_check.sh): everything a first GPU run must show, in one command.

Steps (conf/gpu_check.yaml), each under its own time budget, each failure recorded without stopping the others:

- environment: versions, the device, and its measured bf16 and fp32 matmul peaks (rmlab.hardware);
- speed: `python -m rmlab.train` on Qwen2.5-0.5B's architecture with random weights
  (`model.backbone.random_init=true`: nothing to download), bf16-mixed, as a user runs it; pairs/s,
  tokens/s, MFU and peak memory are the run's own throughput figures (rmlab.throughput, summary.json);
- real: SmolLM2 and MiniLM with their packaged weights trained for a few steps, exported
  (`python -m rmlab.export`) and the export scored (`python -m rmlab.score`) on the device and on
  the CPU: the largest reward difference between the two.

Output: gpu_check.json (every step: status ok | skipped | error, its figures or its error) and
gpu_check.md (the same as a table) in the run dir, beside one folder per step with its logs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import rmlab  # noqa: F401  (first: caps oneDNN before torch runs a kernel)
from rmlab.config import CONFIG_DIR
from rmlab.hardware import matmul_peak_flops

log = logging.getLogger("rmlab.bench.gpu_check")
MIN_STEP_S = 10  # a step is not started with less of the overall budget left


class StepFailed(RuntimeError):
    """A step's process exited non-zero or ran out of time (`log_tail`: its log's last lines)."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


def last_error_line(lines: list[str]) -> str:
    """The line of a log that says what went wrong: the last one that is not a trailer (Hydra's, or
    rmlab's pointer to the traceback after a short user error)."""
    trailer = ("full_key:", "Set the environment variable HYDRA_FULL_ERROR", "(the traceback is in ",
               "(HYDRA_FULL_ERROR=1 shows the traceback")
    said = [line.strip() for line in lines if line.strip() and not line.strip().startswith(trailer)]
    return said[-1] if said else "(empty log)"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def missing_needs(needs: list[str]) -> str | None:
    """Why a step cannot run here ("no CUDA", "flash_attn not installed"), or None."""
    for need in needs:
        if need == "cuda" and not torch.cuda.is_available():
            return "no CUDA"
        if need != "cuda" and importlib.util.find_spec(need) is None:
            return f"{need} not installed"
    return None


def run(command: list[str], log_file: Path, timeout: float) -> None:
    """Run a Python module in a subprocess (stdout + stderr into log_file); StepFailed on error or timeout."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    with log_file.open("w") as handle:
        try:
            done = subprocess.run([sys.executable, "-m", *command], stdout=handle, stderr=subprocess.STDOUT, env=env,
                                  timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{command[0]} timed out after {timeout:.0f} s (the step's budget); see {log_file}") from None
    if done.returncode != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        raise StepFailed(f"{command[0]} exited with {done.returncode}: {last_error_line(lines)} (log: {log_file})",
                         "\n".join(lines[-15:]))


def environment(cfg: DictConfig, step: DictConfig, out: Path, deadline: float) -> dict:
    """Versions, the device, and the measured dense matmul peak in bf16 and fp32."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    result = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "transformers": version("transformers"),
        "lightning": version("lightning"), "flash_attn": version("flash-attn"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}), "
                                                                f"{torch.get_num_threads()} threads",
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else True,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        result.update(capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2**30, 1),
                      multiprocessors=props.multi_processor_count, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    for dtype in ("bfloat16", "float32"):
        result[f"{dtype}_peak_tflops"] = round(matmul_peak_flops(device, dtype, fresh=True) / 1e12, 3)
    return result


def train_overrides(cfg: DictConfig, overrides: list[str], run_dir: Path) -> list[str]:
    """What every training run of the check shares: the device, precision, seed, run dir, CSV logging."""
    return [*overrides, f"trainer.accelerator={cfg.accelerator}", "trainer.devices=1",
            f"trainer.precision={cfg.precision}", f"seed={cfg.seed}", "logger=csv", "~diagnostics",
            f"hydra.run.dir={run_dir}"]


def parameters(overrides: list[str]) -> int:
    """Parameters of the backbone these rmlab.train overrides build (built on the meta device: no memory)."""
    from rmlab.hub import load_tokenizer
    from rmlab.model.backbone import load_backbone

    backbone = OmegaConf.to_container(hydra.compose(config_name="train", overrides=overrides).model.backbone)
    load_tokenizer(**backbone)  # outside the meta device: a GGUF tokenizer's first load dequantises weights into its cache
    with torch.device("meta"):
        model = load_backbone(**{k: v for k, v in backbone.items() if k != "pad_token"})
    return sum(p.numel() for p in model.parameters())


def speed(cfg: DictConfig, step: DictConfig, out: Path, deadline: float) -> dict:
    """A short Qwen training run; its throughput figures and peak memory from its summary.json."""
    q = cfg.qwen
    model = ["model=qwen2_5_0_5b", "pooling=last", "model.backbone.random_init=true", *q.overrides, *step.overrides]
    if q.get("tokenizer"):  # a folder of tokenizer files instead of the packaged SmolLM2's
        model += [f"model.backbone.random_init_from.tokenizer.name_or_path={Path(q.tokenizer).resolve()}",
                  "model.backbone.random_init_from.tokenizer.gguf_file=null"]
    params = parameters([o for o in model if not o.startswith("trainer=")])
    steps = q.warmup_steps + q.steps
    run(["rmlab.train", *train_overrides(cfg, model, out), f"data.batch_size={q.batch_size}",
         f"data.max_length={q.max_length}", f"data.source.n_train={steps * q.batch_size}", "data.source.n_val=8",
         "data.source.n_test=8", f"trainer.max_steps={steps}", "trainer.max_epochs=1", "++trainer.limit_val_batches=0",
         "++trainer.enable_checkpointing=false", "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null",
         f"callbacks.throughput.warmup_steps={q.warmup_steps}", "test_after_fit=false"],
        out / "console.log", deadline - time.time())
    summary = json.loads((out / "summary.json").read_text())
    return {"params": params, "steps": summary["train/steps"], "pairs_per_s": summary["train/pairs_per_s"],
            "tokens_per_s": summary["train/tokens_per_s"], "padding_fraction": summary["train/padding_fraction"],
            "tflops_per_s": summary["train/flops_per_s"] / 1e12, "mfu": summary["train/mfu"],
            "peak_gpu_mb": summary.get("peak_gpu_mb"), "peak_rss_mb": summary["peak_rss_mb"]}


def write_pairs(path: Path, n: int, seed: int) -> None:
    """n synthetic preference pairs as JSON Lines (prompt, chosen, rejected), for scoring."""
    from rmlab.data.synthetic import generate_pairs

    with path.open("w") as handle:
        for pair in generate_pairs(n, seed=seed + 7, length_bias=0.5):
            handle.write(json.dumps({k: pair[k] for k in ("prompt", "chosen", "rejected")}) + "\n")


def read_rewards(path: Path) -> list[float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [reward for row in rows for reward in (row["reward_chosen"], row["reward_rejected"])]


def real(cfg: DictConfig, step: DictConfig, out: Path, deadline: float) -> dict:
    """Train a packaged model briefly on the device, export it, score the export on the device and on the CPU."""
    r = cfg.real
    run(["rmlab.train", *train_overrides(cfg, list(step.overrides), out / "train"), f"data.batch_size={r.batch_size}",
         f"data.source.n_train={r.pairs.train}", f"data.source.n_val={r.pairs.val}", f"data.source.n_test={r.pairs.test}",
         "trainer.max_epochs=1", "callbacks.throughput.warmup_steps=1"],
        out / "console.log", deadline - time.time())
    summary = json.loads((out / "train" / "summary.json").read_text())
    run(["rmlab.export", f"ckpt={summary['best_checkpoint']}", f"out={out / 'export'}", *step.get("export", []),
         f"hydra.run.dir={out / 'export-run'}"], out / "export.log", deadline - time.time())
    export_info = json.loads((out / "export" / "config.json").read_text())["rmlab"]
    pairs = out / "pairs.jsonl"
    write_pairs(pairs, r.score_pairs, cfg.seed)
    device = "cuda" if cfg.accelerator == "gpu" else "cpu"
    rewards = {}
    for where in dict.fromkeys((device, "cpu")):  # on CPU the comparison is trivial, the path the same
        scored = out / f"scores-{where}.jsonl"
        run(["rmlab.score", f"model_path={out / 'export'}", f"data.path={pairs}", f"out={scored}", f"device={where}",
             "precision=fp32", *step.get("score", []), f"hydra.run.dir={out / f'score-run-{where}'}"],
            out / f"score-{where}.log", deadline - time.time())
        rewards[where] = read_rewards(scored)
    diff = max(abs(a - b) for a, b in zip(rewards[device], rewards["cpu"], strict=True))
    result = {"steps": summary["train/steps"], "test_acc": summary.get("test/acc"),
              "pairs_per_s": summary.get("train/pairs_per_s"), "peak_gpu_mb": summary.get("peak_gpu_mb"),
              "peak_rss_mb": summary["peak_rss_mb"], "export_max_abs_diff": export_info["max_abs_diff"],
              "scored_rewards": len(rewards["cpu"]), "reward_max_abs_diff_vs_cpu": diff}
    if diff > r.reward_atol:
        raise StepFailed(f"rewards on {device} differ from the CPU's by up to {diff:.3g} (> real.reward_atol="
                         f"{r.reward_atol}); figures: {result}")
    return result


KINDS = {"environment": environment, "speed": speed, "real": real}


def run_step(cfg: DictConfig, name: str, step: DictConfig, out: Path, check_end: float) -> dict:
    """One step under min(its budget, what is left of the check's): its figures, or why it was skipped or failed."""
    record = {"step": name, "kind": step.kind, "budget_s": step.budget_s}
    start = time.time()
    reason = missing_needs(list(step.get("needs", [])))
    if reason is None and check_end - start < MIN_STEP_S:
        reason = f"the check's budget_s={cfg.budget_s} is spent"
    if reason:
        log.info("%s: skipped (%s)", name, reason)
        return {**record, "status": "skipped", "reason": reason}
    folder = out / name
    if step.kind != "environment":  # (which runs in this process and writes nothing)
        folder.mkdir(parents=True, exist_ok=True)
    log.info("%s: running (budget %d s)", name, step.budget_s)
    try:
        result = KINDS[step.kind](cfg, step, folder, min(start + step.budget_s, check_end))
        record.update(status="ok", **result)
    except Exception as error:  # noqa: BLE001  (any failure is this step's finding; the next step still runs)
        log.warning("%s: %s: %s", name, type(error).__name__, error)
        record.update(status="error", error=f"{type(error).__name__}: {error}")
        if getattr(error, "log_tail", ""):
            record["log_tail"] = error.log_tail
    record["wall_s"] = round(time.time() - start, 1)
    return record


def _number(value, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value * scale)


def report(environment_info: dict | None, records: list[dict], cfg: DictConfig) -> str:
    """The Markdown table of gpu_check.md."""
    env = environment_info or {}
    lines = [f"# rmlab GPU check: {env.get('device', 'environment step failed')}", ""]
    if env:
        lines += [f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, lightning "
                  f"{env['lightning']}, flash-attn {env['flash_attn']}; measured matmul peak bf16 "
                  f"{env['bfloat16_peak_tflops']} TFLOP/s, fp32 {env['float32_peak_tflops']} TFLOP/s.", ""]
    q = cfg.qwen
    lines += [f"Qwen: Qwen2.5-0.5B architecture, random weights, {cfg.precision}, batch {q.batch_size} pairs, "
              f"{q.warmup_steps} warm-up + {q.steps} timed steps. Real runs: {cfg.real.pairs.train} train pairs, "
              f"{cfg.real.score_pairs} pairs scored on both devices (fp32).", "",
              "| step | status | s (budget) | params | pairs/s | tokens/s | TFLOP/s | MFU | peak GPU MB | peak RSS MB | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["status"] == "skipped":
            notes = r["reason"]
        elif r["status"] == "error":
            notes = r["error"].splitlines()[0][:300].replace("|", "/")
        elif r["kind"] == "real":
            notes = (f"test acc {_number(r['test_acc'], fmt='{:.3f}')}; export vs rmlab {r['export_max_abs_diff']:.2g}; "
                     f"{r['scored_rewards']} rewards, device vs CPU max diff {r['reward_max_abs_diff_vs_cpu']:.2g}")
        else:
            notes = ""
        lines.append(f"| {r['step']} | {r['status']} | {r.get('wall_s', '')} ({r['budget_s']}) | "
                     f"{_number(r.get('params'), 1e-6, '{:.1f}M')} | {_number(r.get('pairs_per_s'))} | "
                     f"{_number(r.get('tokens_per_s'), fmt='{:.0f}')} | {_number(r.get('tflops_per_s'), fmt='{:.3g}')} | "
                     f"{_number(r.get('mfu'), 100, '{:.1f}%')} | {_number(r.get('peak_gpu_mb'), fmt='{:.0f}')} | "
                     f"{_number(r.get('peak_rss_mb'), fmt='{:.0f}')} | {notes} |")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="gpu_check")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    check_end = time.time() + cfg.budget_s
    records, environment_info = [], None
    for name, step in cfg.steps.items():
        record = run_step(cfg, name, step, out, check_end)
        if name == "environment" and record["status"] == "ok":
            environment_info = {k: v for k, v in record.items() if k not in ("step", "kind", "budget_s", "status", "wall_s")}
        records.append(record)
        # Written after every step: a check killed from outside still leaves what it found so far.
        (out / "gpu_check.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True),
                                                        "environment": environment_info, "steps": records}, indent=2))
        (out / "gpu_check.md").write_text(report(environment_info, records, cfg))
    print(report(environment_info, records, cfg))
    log.info("written to %s", out)
    failed = [r["step"] for r in records if r["status"] == "error"]
    if failed:  # every step ran and is recorded; the exit status says that some failed
        raise SystemExit(f"gpu check: {len(failed)} step(s) failed: {', '.join(failed)} (see {out / 'gpu_check.md'})")


if __name__ == "__main__":
    main()
