"""Layers the model files share: paged attention, packed linears, projections and the MLP."""
