"""``neuroseg train nuclei|neurons``: each model package owns its training arguments.

A model's training module provides ``add_arguments(parser)`` and ``main(args) -> int``; they are
imported only when that subcommand runs, so ``neuroseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

_MODELS = {
    "nuclei": ("napari_neuroseg.models.stardist3d.train", "train the StarDist-3D nuclei model"),
    "neurons": ("napari_neuroseg.models.neurons.train", "train the FISBe neuron segmenter"),
}


#: path flags of each model's training command (inputs, outputs), checked by ``cli.main``
_IO_FLAGS = {
    "nuclei": ({"--images": "images", "--labels": "labels", "--init-from": "init_from"}, {"--output": "output"}),
    "neurons": ({"--data": "data", "--split": "split", "--init-from": "init"}, {"--output": "out"}),
}


def _runner(module_name: str):
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module_name).main(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (nuclei or neurons)")
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, (module_name, help_text) in _MODELS.items():
        mp = models.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # the model's training code is not available in this build
            continue
        module.add_arguments(mp)
        mp.set_defaults(func=_runner(module_name), io_flags=_IO_FLAGS.get(name))
