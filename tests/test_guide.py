"""TRAINING_GUIDE.md and README.md against the code: the reference tables are the ones the code
writes, every training option and every CLI command is in the guide, README's links resolve."""

import ast
import dataclasses
import inspect
import math
import re
from pathlib import Path
from statistics import NormalDist

import torch

from acestep.cli import build_parser
from acestep.training.config_schema import describe_fields
from acestep.training.reference import TABLES, main, render_guide

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "TRAINING_GUIDE.md"
README = ROOT / "README.md"


def test_the_reference_tables_in_the_guide_are_the_ones_the_code_writes():
    text = GUIDE.read_text(encoding="utf-8")
    assert render_guide(text) == text, "run: env/bin/python -m acestep.training.reference TRAINING_GUIDE.md"
    for name in TABLES:
        assert f"<!-- reference:{name} -->" in text


def test_the_preset_table_in_the_readme_is_the_one_the_code_writes(tmp_path):
    text = README.read_text(encoding="utf-8")
    assert "<!-- reference:presets -->" in text
    assert render_guide(text) == text, "run: env/bin/python -m acestep.training.reference README.md"
    plain = tmp_path / "plain.md"
    plain.write_text("# no tables here\n", encoding="utf-8")
    assert main([str(plain), "--check"]) == 1  # a document without a table block is an error, not "current"


def test_a_stale_table_is_found_and_rewritten(tmp_path):
    stale = tmp_path / "guide.md"
    text = GUIDE.read_text(encoding="utf-8")
    stale.write_text(text.replace("| `vram_8gb` | 8 GB+ | 16 / 32", "| `vram_8gb` | 8 GB+ | 8 / 16"), encoding="utf-8")
    assert main([str(stale), "--check"]) == 1
    assert main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text


def test_every_training_option_is_in_the_guide_with_its_default():
    text = GUIDE.read_text(encoding="utf-8")
    for doc in describe_fields():
        assert re.search(rf"\| `{re.escape(doc.path)}` \| `[^`]*` \|", text), doc.path


def test_every_cli_command_is_in_the_guide():
    text = GUIDE.read_text(encoding="utf-8")
    [commands] = [action for action in build_parser()._actions if action.dest == "command"]
    missing = [name for name in commands.choices if f"acestep-trainer {name}" not in text]
    assert not missing, f"commands the guide never shows: {missing}"


def test_readme_gives_install_start_and_test_commands_and_its_images_exist():
    text = README.read_text(encoding="utf-8")
    for command in ("./install.sh", "install.bat", "./start.sh", "start.bat", "env/bin/python -m pytest"):
        assert command in text, command
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 3
    for image in images:
        assert (ROOT / image).is_file(), image
    assert "TRAINING_GUIDE.md" in text


# ---- facts in the guide's prose that are derived from the code -------------------------------------
OPTION = re.compile(r"(?<![\w./-])((?:model|data|adapter|objective|optimizer|run)\.[a-z_]+)\b")
SOURCE_FILES = [*sorted((ROOT / "acestep").rglob("*.py")), ROOT / "launch.py"]


def section(heading: str) -> str:
    """The guide's text under `heading` (a whole heading line), up to the next heading of the same
    or a higher level."""
    text = GUIDE.read_text(encoding="utf-8")
    level = heading.split(" ")[0]
    start = text.index("\n" + heading + "\n") + 1
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), text[start + len(heading):], re.M)]
    return text[start:start + len(heading) + ends[0]] if ends else text[start:]


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first Markdown table in `text` whose header line starts
    with `header_start`."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def constant(relative_path: str, name: str):
    """The literal value of the module-level constant `name` in a source file (read, not imported)."""
    tree = ast.parse((ROOT / relative_path).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "frozenset":
                return frozenset(ast.literal_eval(value.args[0]))
            return ast.literal_eval(value)
    raise AssertionError(f"{relative_path} has no constant {name}")


def flat(text: str) -> str:
    """Text with every run of white space as one space, so line breaks in the guide do not matter."""
    return " ".join(text.split())


def number(text: str) -> float:
    return float(text.replace(",", "").replace("−", "-"))


def test_every_option_the_guide_names_exists():
    text = GUIDE.read_text(encoding="utf-8")
    paths = {doc.path for doc in describe_fields()}
    named = {match for match in OPTION.findall(text) if match.rsplit(".", 1)[1] not in ("toml", "json", "py")}
    assert named - paths == set(), "options the guide names that the config does not have"


def test_the_timestep_section_gives_the_distribution_the_code_draws():
    from acestep.models.config import OPTIONAL_DEFAULTS
    from acestep.training.objective import TURBO_SHIFT3_TIMESTEPS, min_snr_weights, sample_timesteps
    from acestep.training.step import VALIDATION_QUANTILES, Objective, validation_timesteps

    text = section("### Timesteps, Min-SNR and CFG dropout in detail")
    mu, sigma = OPTIONAL_DEFAULTS["timestep_mu"], OPTIONAL_DEFAULTS["timestep_sigma"]
    signature = inspect.signature(sample_timesteps).parameters
    assert (signature["mu"].default, signature["sigma"].default) == (mu, sigma)
    assert f"μ = {mu:g}".replace("-", "−") + f" and σ = {sigma:.1f}" in text
    objective = Objective("logit_normal", mu, sigma, 0.15, None)
    assert f"`timesteps: {objective.describe()}`" in flat(text)

    normal = NormalDist()
    one = lambda t: normal.cdf((math.log(t / (1 - t)) - mu) / sigma)  # noqa: E731  CDF of one draw
    grid = [(i + 0.5) / 20000 for i in range(20000)]
    rows = {row[0]: row[1:] for row in table_rows(text, "| | 10 % of steps below")}
    larger, single, uniform = (rows[key] for key in ("Larger of two draws (what the trainer uses)",
                                                       "One logit-normal draw", "Uniform"))
    assert larger[:5] == [f"{t:.3f}" for t in validation_timesteps(objective)]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert single[:5] == [f"{sigmoid(mu + sigma * normal.inv_cdf(q)):.3f}" for q in VALIDATION_QUANTILES]
    assert uniform[:5] == [f"{q:g}" for q in VALIDATION_QUANTILES]
    assert larger[5] == f"{sum(1 - one(t) ** 2 for t in grid) / len(grid):.3f}"
    assert single[5] == f"{sum(1 - one(t) for t in grid) / len(grid):.3f}"
    assert larger[6] == f"{100 * (one(0.8) ** 2 - one(0.4) ** 2):.0f} %"
    assert single[6] == f"{100 * (one(0.8) - one(0.4)):.0f} %"

    turbo = [f"{round(t, 3)}" for t in TURBO_SHIFT3_TIMESTEPS]
    assert ", ".join(turbo[:-1]) + " and " + turbo[-1] in flat(text)

    from acestep.training.presets import load_preset

    gamma = load_preset("high_quality").config["objective"]["min_snr_gamma"]
    assert f"{gamma:g} in the `high_quality` preset" in text
    threshold = 1 / (1 + math.sqrt(gamma))
    assert f"{threshold:.3f} at γ = {gamma:g}" in text
    assert f"about {100 * one(threshold) ** 2:.0f} % of the steps" in flat(text)
    for t in (0.2, 0.1):
        assert f"{min_snr_weights(torch.tensor([t]), gamma).item():.2f} at t = {t}" in text

    [cfg] = [doc for doc in describe_fields() if doc.path == "objective.cfg_dropout"]
    assert f"`objective.cfg_dropout` ({cfg.default:g}" in text


def test_the_epoch_table_counts_steps_as_the_trainer_does():
    from acestep.training.plan import optimizer_steps_per_epoch
    from acestep.training.presets import load_preset

    text = section("### How long to train")
    rows = table_rows(text, "| Songs | Steps per epoch")
    assert [row[0] for row in rows] == ["5", "10-20", "30-50", "100"]

    def steps(songs: int, batch: int, accumulation: int) -> int:
        return optimizer_steps_per_epoch(math.ceil(songs / batch), accumulation)

    for songs_cell, batch_1x4, batch_3x1, epochs, *_ in rows:
        counts = [int(n) for n in songs_cell.split("-")]
        assert batch_1x4 == "-".join(str(steps(n, 1, 4)) for n in counts)
        assert batch_1x4 == "-".join(str(steps(n, 2, 2)) for n in counts)
        assert batch_3x1 == "-".join(str(steps(n, 3, 1)) for n in counts)
        low, high = (number(n) for n in epochs.split("-"))
        for stated, wanted in ((low, 2000 / steps(counts[-1], 1, 4)), (high, 4000 / steps(counts[0], 1, 4))):
            assert abs(stated - wanted) <= 0.05 * wanted, (songs_cell, stated, wanted)

    tiers = [load_preset(name).config for name in ("vram_24gb_plus", "vram_16gb", "vram_12gb", "vram_8gb")]
    assert {tier["run"]["epochs"] for tier in tiers} == {800, 1000} and "800 or 1,000 epochs" in text
    assert {tier["run"]["early_stopping_patience"] for tier in tiers} == {80} and "80 epochs" in text
    assert [tier["adapter"]["rank"] for tier in tiers] == [64, 64, 32, 16]
    assert {(tier["data"]["batch_size"], tier["optimizer"]["gradient_accumulation"]) for tier in tiers} == {
        (3, 1), (2, 2), (1, 4)}


def test_the_multi_gpu_section_names_the_options_it_relies_on():
    text = section("### Several GPUs")
    named = set(OPTION.findall(text))
    assert {"run.devices", "run.strategy", "run.num_nodes", "data.batch_size",
            "optimizer.gradient_accumulation"} <= named
    assert named <= {doc.path for doc in describe_fields()}
    from acestep.training.config_schema import RunConfig

    [strategy] = [f for f in dataclasses.fields(RunConfig) if f.name == "strategy"]
    for choice in strategy.metadata["choices"]:
        assert f'`run.strategy = "{choice}"`' in text or f'`"{choice}"`' in text, choice
    loop = (ROOT / "acestep/training/loop.py").read_text(encoding="utf-8")
    assert "it ran on {state['world_size']} process(es), this run has {self.fabric.world_size}" in loop
    assert "The data order would differ; to resume anyway, run `acestep-trainer train \"" in loop
    assert ("it ran on 2 process(es), this run has 1. The data order would differ; to resume anyway, run "
            "acestep-trainer train --resume RUN --force") in flat(text)


def test_the_lan_section_matches_the_server_settings():
    text = section("## 9. Sharing the app on your network")
    size = constant("acestep/ui/app.py", "MAX_UPLOAD")
    assert size.endswith("mb") and f"capped at {size[:-2]} MB" in text
    for path in ("/", "/login", "/logout"):
        assert path in constant("acestep/ui/security.py", "PUBLIC_PATHS") and f"`{path}`" in text
    for prefix in constant("acestep/ui/security.py", "PUBLIC_PREFIXES")[:3]:
        assert f"`{prefix}`" in text
    assert constant("launch.py", "LAN_HOST") == "0.0.0.0" and "`0.0.0.0`" in text
    security = (ROOT / "acestep/ui/security.py").read_text(encoding="utf-8")
    assert "Not authenticated: log in first." in security and "`Not authenticated: log in first.`" in flat(text)


def test_the_files_table_names_the_files_the_code_writes():
    rows = table_rows(section("### Files the app reads and writes"), "| Path | What |")
    table = " ".join(" ".join(row[:2]) for row in rows)
    names = [
        *(f"{folder}/" for folder in constant("acestep/ui/context.py", "WORKSPACE_FOLDERS")),
        constant("acestep/ui/train_tab.py", "CONFIGS_FOLDER"), constant("acestep/ui/caption_tab.py", "CSV_NAME"),
        *(constant("acestep/jobs/store.py", name) for name in ("JOB_FILE", "LOG_FILE", "EVENTS_FILE", "LOCK_FILE")),
        constant("acestep/preprocess/manifest.py", "MANIFEST_NAME"),
        constant("acestep/preprocess/pipeline.py", "INTERMEDIATE_DIR"),
        *(constant("acestep/training/run_layout.py", name) for name in (
            "CHECKPOINTS_DIR", "COMPLETE_MARKER", "ADAPTER_DIR", "CONFIG_FILE", "EVENTS_FILE", "PREVIEWS_FOLDER")),
        constant("acestep/training/run_layout.py", "STOP_FILE"),
        constant("acestep/ui/export_tab.py", "MERGE_INFO"),
        f'{constant("acestep/ui/listen_tab.py", "LISTEN_FOLDER")}/',
        constant("acestep/inference/render.py", "RECORD_NAME"),
        *(f"{name}/" for name in constant("acestep/training/run_layout.py", "NAMED_ADAPTERS")),
    ]
    missing = [name for name in names if name not in table]
    assert not missing, f"files the code writes that the table does not name: {missing}"
    # ... and every literal name in the table is in the code (placeholders in <> are skipped)
    source = "\n".join(path.read_text(encoding="utf-8") for path in SOURCE_FILES)
    words = {part.strip("$.") or part for token in re.findall(r"`([^`]+)`", table) for word in token.split()
             for part in word.split("/") if part and "<" not in part and not part.startswith("-")}
    unknown = sorted(word for word in words if word not in source)
    assert not unknown, f"names in the files table that no source file contains: {unknown}"
