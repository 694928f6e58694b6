"""Identifiers that need quoting, end to end: spaces, quotes, backticks,
reserved words, Chinese names; values that look like SQL stay values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_helpers import PipelineThread, cdc, write_pipeline


def test_awkward_names_and_injection_attempts(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE `客户` (`编号` INT PRIMARY KEY, `名字` VARCHAR(50),"
                     " `order` INT, `select` VARCHAR(60), `a b` VARCHAR(20),"
                     " `q\"uote` VARCHAR(20), `back``tick` VARCHAR(20)) DEFAULT CHARSET=utf8mb4")
    pg_db.execute('CREATE TABLE "客户 表" ("编号" integer PRIMARY KEY, "名字" text,'
                  ' "order" integer, "select" text, "a b" text, "q""uote" text,'
                  ' "back`tick" text)')
    pg_db.execute("CREATE TABLE victim (x integer)")
    rule = ("INSERT INTO `客户 表` (`编号`, `名字`, `order`, `select`, `a b`, `q\"uote`,"
            " `back``tick`)\n"
            "SELECT c.`编号`, c.`名字`, c.`order`, c.`select`, c.`a b`, c.`q\"uote`,"
            " c.`back``tick` FROM `客户` AS c")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"customers": rule})
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    evil = "'); DROP TABLE victim; --"
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO `客户` VALUES (1, '王小明', 7, %s, 'x y', 'a\"b', 'c`d')",
                         (evil,))
        mysql_db.execute("UPDATE `客户` SET `名字` = '李丽' WHERE `编号` = 1")
        p.wait_caught_up()
    assert pg_db.query('SELECT "编号", "名字", "order", "select", "a b", "q""uote", "back`tick"'
                       ' FROM "客户 表"') == [(1, "李丽", 7, evil, "x y", 'a"b', "c`d")]
    assert pg_db.query("SELECT to_regclass('victim') IS NOT NULL") == [(True,)]
