"""One line per reported metric: what it measures and which way is good. The terminal tables print them as
legends and the HTML page beside each metric, so both say the same (docs/metrics.md has the formulas)."""
from __future__ import annotations

GLOSSARY = {
    "forget accuracy": "share of forget-class images still given their class; lower is better (the target is "
                       "the gate)",
    "retain accuracy": "mean over retain classes of each class's accuracy; keep it (higher is better)",
    "worst retain class": "the retain class with the lowest accuracy",
    "largest retain-class drop": "edited minus original accuracy of the retain class that lost most; a loss is "
                                 "negative, near 0 is best",
    "selectivity": "forget-accuracy drop minus mean retain-accuracy drop; higher is better, 1 is ideal",
    "retain agreement": "share of retain images the model labels as the original does; higher is better",
    "retain KL": "KL(original || model) of the output distributions on retain images; lower is better",
    "JS divergence": "Jensen-Shannon divergence of the outputs to the retrained reference's; lower is better",
    "MIA member rate": "share of forget-class training images a membership attack calls members; the "
                       "reference's rate is the goal (lower is better for the confidence attack)",
    "MIA balanced accuracy": "the attack's own balanced accuracy on retain classes (how strong the attack is)",
    "CKA gain": "linear CKA of the deepest layers' forget-sample features to the retrained reference, edited "
                "minus original; higher is better (deep features nearer a retrained model)",
    "forget logit change": "mean change of the forget class's logit on its images, split into head bias, head "
                           "weights and features; more negative is more removed",
    "bias-shift share": "part of the forget-logit drop that the head bias alone makes; lower means deeper "
                        "forgetting",
    "layer sep.": "how well a linear probe tells forget from retain inputs of the layer (0 not at all, 1 fully)",
    "subspace sep.": "the same within the forget directions (rank: how many directions)",
    "alpha": "edit strength from the separability (0 none, 1 the forget component removed)",
    "rel. change": "||W' - W|| / ||W|| of the layer's weight",
    "quant. err.": "requantisation error relative to the edit (lower is better); clipped: values clipped to "
                   "the integer range",
    "CKA to ref.": "similarity of the layer's forget-sample features to the retrained model's (0..1, higher is "
                   "better)",
    "forget Delta": "forget-vs-retain distance a linear probe sees in the layer's input (separability: the same "
                    "as 0..1); lower after the edit (ratio < 1) means less of the class is left",
}


def legend(*keys: str) -> str:
    """'key: meaning' lines for the given metrics."""
    return "\n".join(f"{k}: {GLOSSARY[k]}" for k in keys)
