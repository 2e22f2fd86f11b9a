"""Channel pruning, exact and cached: split a model at a conv layer (graph_split), zero channels
(zeroing), rank them by clean activation (profiling), sweep every pruned model cheaply (sweep,
curve) and choose one per accuracy budget in exact arithmetic (selection)."""
