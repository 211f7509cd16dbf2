"""The README is the front door: its settings table must name every setting the code reads."""

from pathlib import Path

from prognet.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


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
