"""Verification: metrics, forgetting measures and gates, the model runs that feed them."""
