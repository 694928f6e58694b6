"""cdc: change-data-capture between MySQL/MariaDB and PostgreSQL through SQL rules."""

__version__ = "0.1.0"
