"""The ``reinflow`` command line: the application layer above ``flows/`` (which sit above ``tasks/``
and the library). The library (``reinflow/``) never imports this package, Prefect or the flows."""
