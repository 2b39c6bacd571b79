"""``polyalign study``: the papers' experiment on a real model in one resumable command.

- :mod:`.recipe`: the YAML recipe (every number with its reason), ``--quick`` merged in;
- :mod:`.data`: training / probe files from the released MPO data, MultiJail overlap check;
- :mod:`.train`: one training configuration per method; :mod:`.evaluate`: one model's
  MultiJail evaluation, degenerate answers, reward gap; :mod:`.probes`: retrieval and
  collinearity on the analysis model;
- :mod:`.stages`: resumable stages and cost accounting; :mod:`.runner`: the orchestration;
- :mod:`.table`: the aggregate table; :mod:`.readme`: the README block and its check.
"""

from polyalign._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "load_recipe": "polyalign.study.recipe",
    "run_study": "polyalign.study.runner",
})
