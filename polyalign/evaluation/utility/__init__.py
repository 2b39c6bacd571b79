"""Utility evaluation: did alignment cost the model its (multilingual) abilities?

- :mod:`.tasks`: local JSONL/CSV tasks described as data (column mapping, prompt template).
- :mod:`.multiple_choice`: log-likelihood scoring, ``acc`` / ``acc_norm`` / ``acc_bytes``
  as lm-evaluation-harness 0.4.13 defines them, per language.
- :mod:`.exact_match`: greedy generation and MGSM-style number extraction, per language.
- :mod:`.lm_eval_bridge`: standard tasks (MGSM, MMMLU, Belebele, XNLI, XCOPA, ...) through
  lm-eval (optional extra ``polyalign[lmeval]``), folded into ``{lang: {metric: value}}``.
- :mod:`.run`: ``evaluate_utility``, ``evaluate_utility_suite``, ``over_refusal``.

Names are imported lazily so that importing the package does not import torch.
"""

from __future__ import annotations

from polyalign._lazy import lazy_exports

_EXPORTS = {
    "UtilityTask": "polyalign.evaluation.utility.tasks",
    "register_task": "polyalign.evaluation.utility.tasks",
    "list_tasks": "polyalign.evaluation.utility.tasks",
    "resolve_task": "polyalign.evaluation.utility.tasks",
    "load_items": "polyalign.evaluation.utility.tasks",
    "evaluate_multiple_choice": "polyalign.evaluation.utility.multiple_choice",
    "evaluate_exact_match": "polyalign.evaluation.utility.exact_match",
    "extract_number": "polyalign.evaluation.utility.exact_match",
    "run_lm_eval": "polyalign.evaluation.utility.lm_eval_bridge",
    "fold_results": "polyalign.evaluation.utility.lm_eval_bridge",
    "task_language": "polyalign.evaluation.utility.lm_eval_bridge",
    "evaluate_utility": "polyalign.evaluation.utility.run",
    "evaluate_utility_suite": "polyalign.evaluation.utility.run",
    "over_refusal": "polyalign.evaluation.utility.run",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
