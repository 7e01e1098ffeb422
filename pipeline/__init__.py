"""Data pipeline: recipes, the Ray build runner, mixing, the CLI."""
