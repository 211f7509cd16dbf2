"""The README is the front door: its settings table must name every setting the code reads, its folder table every
folder there is."""

import subprocess
from pathlib import Path

from prognet.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_readme_leads_with_the_two_commands():
    first_block = README.split("```")[1]
    assert "make dev" in first_block and "make test" in first_block


def test_every_setting_is_documented():
    for name, field in Settings.model_fields.items():
        env = field.validation_alias.choices[0] if field.validation_alias else name.upper()
        assert f"`{env}`" in README, f"{env} is missing from the README's settings table"


def test_the_event_catalogue_in_the_readme_is_the_codes():
    from models.event_catalogue import markdown

    assert markdown().strip() in README, "paste `prognet events catalogue` into the README"


def test_the_alerting_section_names_every_shipped_rule_and_routing_level():
    from models.alerting import load_alerting_config

    section = README[README.index("## Monitoring and alerting") :]
    section = section[: section.index("\n## ")]
    config = load_alerting_config(Path(__file__).resolve().parents[2] / "config" / "alerting.toml")
    for rule in config.rules:
        assert f"`{rule.name}`" in section, f"rule {rule.name} is missing from the README's rule table"
    for route in config.routes:
        for level in route.levels:
            for address in level.emails:
                assert f"`{address}`" in section, f"{address} is missing from the README's routing table"


def test_the_folder_table_lists_every_top_level_folder_and_no_other():
    section = README[README.index("| folder | holds |") :]
    rows = section[: section.index("\n\n")].splitlines()[2:]
    listed = {row.split("`")[1].rstrip("/") for row in rows}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    folders = {path.split("/")[0] for path in tracked.splitlines() if "/" in path and not path.startswith(".")}
    assert listed == folders
