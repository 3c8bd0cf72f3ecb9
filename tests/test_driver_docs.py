"""Every driver is documented like the others, and its documented sample is valid (STYLE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config.loader import load_config
from drivers import DRIVERS

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## Devices", "## Configuration", "## Readings", "## Health", "## Troubleshooting")


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_driver_readme_has_the_sections_and_the_sample(name: str) -> None:
    folder = ROOT / "drivers" / name
    readme = (folder / "README.md").read_text()
    for section in SECTIONS:
        assert section in readme, f"{folder}/README.md lacks {section!r}"
    sample = (folder / "sample.yaml").read_text()
    begin, end = "<!-- sample:begin -->\n```yaml\n", "```\n<!-- sample:end -->"
    assert begin in readme, "README.md lacks the sample markers"
    pasted = readme.split(begin, 1)[1].split(end, 1)[0]
    assert pasted == sample, f"drivers/{name}/README.md's sample differs from sample.yaml"


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_driver_sample_validates(name: str, tmp_path: Path) -> None:
    sample = yaml.safe_load((ROOT / "drivers" / name / "sample.yaml").read_text())
    config = {
        "gateway": {"id": "gw-docs", "community": {"code": "350102001001"}},
        "buffer": {"path": str(tmp_path / "b.db")},
        "buses": sample.get("buses", []),
        "devices": sample["devices"],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    loaded = load_config(path)
    assert {d.driver for d in loaded.devices} == {name}
    assert all(d.code is not None and len(d.code) == 20 for d in loaded.devices)
