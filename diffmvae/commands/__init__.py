"""The ``diffmvae`` command line: one module per command (``fit``, ``sample``, ``evaluate``, ``prior``,
``classifiers``, ``export``, ``unite``, ``pipeline``), ``common`` for the options they share, and ``main``, which
dispatches. Each module parses arguments and calls the library; none holds model code."""
