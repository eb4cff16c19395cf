"""``python -m fewview ...`` (and ``torchrun -m fewview train ...``) runs the ``fewview`` command."""

from .cli import main

raise SystemExit(main())
