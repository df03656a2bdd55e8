"""The runtime type checker tests/conftest.py installs over offsetjax: beartype, with PEP 484's
numeric tower (an int where a float is declared is valid, as for static type checkers)."""

from beartype import BeartypeConf, beartype

check = beartype(conf=BeartypeConf(is_pep484_tower=True))
