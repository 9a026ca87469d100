"""Per-dataset experiment pipelines: fit → prior fit → evaluate → a comparison table and plots, resumable stage by
stage (``diffmvae pipeline --config experiments/<dataset>/pipeline.yaml``).

A pipeline YAML names the models to train (each a ``diffmvae fit`` config, with overrides), what to evaluate, and
optionally a sweep (every model trained once per value: Wesego & Rooshenas 2024 Fig. 7 trains each model on 2, 3, 4 and 5
modalities). Every stage is one ``diffmvae`` command run in a subprocess, exactly as a user would type it; its
arguments are logged and the derived fit configs are written under ``OUT/configs/``, so every number in the final
table can be reproduced by hand. A stage that finished leaves ``OUT/<run>/<stage>.done.json`` (written last, by a
rename) and is never redone; a fit interrupted half-way resumes from its ``last.ckpt``.

Pipeline keys::

    out: runs/pipelines/polydigits          # everything is written here
    classifiers: null                       # judge file of every evaluation (default: the data's cached set)
    sweep: {name: M, values: {2: [m0, m1], 3: [m0, m1, m2]}}   # optional; values are modality lists (``keep``)
    models:
      mopoe: {config: experiments/polydigits/mopoe.yaml, args: [--trainer.max_steps=1500],
              prior: experiments/polydigits/prior.yaml}
      star:  {config: experiments/polydigits/diffmvae_star.yaml, warm_start: mopoe, prior: ...}
    evaluate: {n_samples: 360, max_subsets: 1, args: [--steps, "50"]}
    priors: [score, gaussian]               # unconditional samples under each (score needs a model's prior)
    fit_args: [--data.init_args.root=/data/CUB_200_2011]   # appended to every fit
    set: {"**.latent_dim": 64}              # keys set in every derived fit config (dotted paths, or **.name anywhere)
"""


from diffmvae.pipeline.run import run_pipeline, stages
from diffmvae.pipeline.spec import PipelineSpec, load_pipeline

__all__ = ["PipelineSpec", "load_pipeline", "run_pipeline", "stages"]
