"""Transformation rules: one SQL ``INSERT … SELECT`` per file.

``parse`` reads files into ``Rule`` objects (syntax only), ``bind`` checks a
rule against table shapes read from the live databases, ``compile`` turns a
bound rule into the set-based SQL run on the target.  None of them opens a
connection.
"""

from cdc.rules.bind import BoundRule, bind
from cdc.rules.parse import Rule, load_rules, parse_rule

__all__ = ["BoundRule", "Rule", "bind", "load_rules", "parse_rule"]
