"""The method: projection math, per-layer DAMP plans, held-out selection, the readout stage, the pipeline."""
