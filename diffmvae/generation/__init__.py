"""Generation from a trained model: any subset given (``sampling``, which also writes ``samples.npz`` and grids),
the latent score prior's aggregate posterior and fit (``latent_prior``), latent traversals (``traversal``), and
Unite-and-Conquer across separately trained models (``unite``)."""
