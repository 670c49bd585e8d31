"""``python -m napari_neuroseg.cli ...``: the ``neuroseg`` command without its console script."""

from napari_neuroseg.cli import main

raise SystemExit(main())
