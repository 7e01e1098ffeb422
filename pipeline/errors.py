"""Errors that are the user's to fix: the CLI prints them without a traceback, exit code 2."""

from model.cli import user_errors
from pipeline.mix import MixError
from pipeline.recipe import RecipeError
from pipeline.runner import BuildError
from stages.base import StageError

USER_ERRORS: tuple[type[BaseException], ...] = (
    RecipeError, BuildError, StageError, MixError, FileNotFoundError, *user_errors(),
)
