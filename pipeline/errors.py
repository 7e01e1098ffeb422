"""Errors that are the user's to fix: the CLI prints them without a traceback, exit code 2."""

from pipeline.mix import MixError
from pipeline.recipe import RecipeError
from pipeline.repro import ReproError
from pipeline.runner import BuildError
from stages.base import StageError


def _trainer_errors() -> tuple[type[BaseException], ...]:
    try:  # the trainer's errors need torch; without it, the data commands still report cleanly
        from model.cli import user_errors

        return user_errors()
    except ImportError:
        return ()


USER_ERRORS: tuple[type[BaseException], ...] = (
    RecipeError, BuildError, StageError, MixError, ReproError, FileNotFoundError, *_trainer_errors(),
)
