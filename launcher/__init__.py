"""Process launchers: how a bertflow process starts (a faster malloc, ``malloc.py``), before anything heavy is
imported. Only the standard library here, so torch, Prefect and MLflow load once, in the process that keeps them.

    bertflow ...                     launcher.bertflow:main, the console script: restart, then flows.cli.main
    python -m launcher.train ...     restart, then python -m bert_core.training's main (torchrun -m too)
"""
