"""Analyses of models and their representations (docs/methods.md sections 1-3).

- :mod:`.hidden`: per-layer pooled hidden states (mean / last token), padding masked;
- :mod:`.retrieval`: bilingual sentence retrieval per layer;
- :mod:`.collinearity`: rank-1 share of parallel prompts' representations (MLC);
- :mod:`.reward_gap`: length-normalised reward gap per language (MPO);
- :mod:`.probe`, :mod:`.mlp_access`, :mod:`.neurons`: toxicity probe, toxic MLP neurons,
  their top tokens, per-language activations and activation offsets;
- :mod:`.stats`: Pearson / Spearman correlation with ``n`` and p-values.
"""

from polyalign.analysis.collinearity import CollinearityResult, collinearity, mean_pairwise_cosine, rank1_share
from polyalign.analysis.hidden import pooled_hidden_states, prompt_last_token_states
from polyalign.analysis.neurons import (
    Neuron,
    activations_by_language,
    find_toxic_neurons,
    neuron_activations,
    neuron_offset,
    neuron_top_tokens,
    rank_value_vectors,
    top_tokens,
)
from polyalign.analysis.probe import LinearProbe, fit_probe, train_toxicity_probe
from polyalign.analysis.retrieval import RetrievalResult, bilingual_retrieval, retrieval_scores, sentences_from_variants
from polyalign.analysis.reward_gap import (
    RewardGapResult,
    average_response_logps,
    correlate_gap_with_metric,
    pairs_from_records,
    reward_gap,
)
from polyalign.analysis.stats import correlate

__all__ = [
    "CollinearityResult", "LinearProbe", "Neuron", "RetrievalResult", "RewardGapResult",
    "activations_by_language", "average_response_logps", "bilingual_retrieval", "collinearity",
    "correlate", "correlate_gap_with_metric", "find_toxic_neurons", "fit_probe", "mean_pairwise_cosine",
    "neuron_activations", "neuron_offset", "neuron_top_tokens", "pairs_from_records", "pooled_hidden_states",
    "prompt_last_token_states", "rank1_share", "rank_value_vectors", "sentences_from_variants",
    "retrieval_scores", "reward_gap", "top_tokens", "train_toxicity_probe",
]
