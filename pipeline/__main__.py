"""`python -m pipeline ...` is the CLI (what `ray job submit -- python -m pipeline build ...` runs)."""

from pipeline.cli import main

raise SystemExit(main())
