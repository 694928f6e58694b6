"""Config loading: every mistake is one line naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.config import ConfigError, DatabaseUrl, load

BASE = """\
pipeline: shop_to_crm
source:
  url: mysql://reader:${SHOP_PW}@10.0.0.5:3306/shop
target:
  url: postgresql://writer@10.0.0.9/crm
rules: rules/
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_minimal_config_and_env_expansion(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE), env={"SHOP_PW": "s3cr:t"})
    assert cfg.pipeline == "shop_to_crm"
    assert cfg.source.kind == "mysql" and cfg.source.password == "s3cr:t"
    assert cfg.source.host == "10.0.0.5" and cfg.source.database == "shop"
    assert cfg.target.kind == "postgresql" and cfg.target.port == 5432
    assert cfg.rules_dir == (tmp_path / "rules").resolve()
    assert cfg.batch_max_rows > 0 and cfg.slot == "cdc_shop_to_crm"


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "batch:\n  max_row: 10\n")
    with pytest.raises(ConfigError) as e:
        load(p, env={"SHOP_PW": "x"})
    msg = str(e.value)
    assert f"{p}:8:" in msg and "'batch.max_row'" in msg and "did you mean 'batch.max_rows'" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'taget'.*did you mean 'target'"):
        load(write(tmp_path, BASE + "taget: {}\n"), env={"SHOP_PW": "x"})


def test_missing_env_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:3: environment variable SHOP_PW is not set"):
        load(write(tmp_path, BASE), env={})


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'rules'"):
        load(write(tmp_path, BASE.replace("rules: rules/\n", "")), env={"SHOP_PW": "x"})


def test_malformed_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: invalid YAML"):
        load(write(tmp_path, "pipeline: [unclosed\nsource: {"), env={})


def test_wrong_value_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'batch.max_rows' must be an integer"):
        load(write(tmp_path, BASE + "batch:\n  max_rows: lots\n"), env={"SHOP_PW": "x"})


def test_rule_options(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, BASE + "rule_options:\n  customers:\n    key: [customer_no]\n"
                     "    on_delete: soft\n    soft_delete_column: deleted_at\n"),
               env={"SHOP_PW": "x"})
    o = cfg.options_for("customers")
    assert o.key == ("customer_no",) and o.on_delete == "soft"
    assert cfg.options_for("other").on_delete == "delete"
    with pytest.raises(ConfigError, match="on_delete must be one of"):
        load(write(tmp_path, BASE + "rule_options:\n  c:\n    on_delete: vanish\n"),
             env={"SHOP_PW": "x"})


def test_urls() -> None:
    u = DatabaseUrl.parse("postgresql://u:p%40ss@h:6543/db?sslmode=require")
    assert (u.user, u.password, u.port, u.params) == ("u", "p@ss", 6543, {"sslmode": "require"})
    assert u.redacted() == "postgresql://u@h:6543/db"
    with pytest.raises(ConfigError, match="unsupported scheme 'oracle'"):
        DatabaseUrl.parse("oracle://x@y/z")
    with pytest.raises(ConfigError, match="names no database"):
        DatabaseUrl.parse("mysql://x@y/")
