"""``python -m napari_neuroseg`` is ``neuroseg``."""

import sys

from napari_neuroseg.cli import main

sys.exit(main())
