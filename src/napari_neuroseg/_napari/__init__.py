"""The napari layer of napari-neuroseg: the only package that imports napari or Qt.

``readers``/``writers``/``samples`` are the npe2 contributions listed in ``napari.yaml``;
``_workers.start_worker`` runs progress generators in a worker thread; ``_notify`` turns errors
into notifications; one ``<feature>_widget.py`` module per dock widget.
"""
