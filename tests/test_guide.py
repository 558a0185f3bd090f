"""TRAINING_GUIDE.md and README.md against the code: the reference tables are the ones the code
writes, every training option and every CLI command is in the guide, README's links resolve."""

import re
from pathlib import Path

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
