"""The ``evals`` package: the eval API (``evals.utils``) and the eval apps.

Every folder under ``evals/`` other than ``utils`` is an app: an ``eval.py`` defining ``create_net``,
``net_inference`` and optionally ``net_preprocess``, plus whatever sibling modules it imports as
``evals.<app>.<module>``. The runtime appends each user evals directory (a folder whose subfolders are apps)
to ``evals.__path__``, so user apps live in the same namespace as the built-in ones and old scripts'
``from evals.utils import ...`` / ``from evals.<app>.x import y`` imports keep working.

Nothing happens at import time.
"""
