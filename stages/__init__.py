"""Stages: one module per concern. Importing `load_all()` registers every stage and source."""

import importlib
import pkgutil


def load_all() -> None:
    """Import every module in this package so its @register classes are known to recipes."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
