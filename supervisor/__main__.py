"""`python -m supervisor`: the same as the `claude-supervisor` executable."""

from ._cli import main

raise SystemExit(main())
