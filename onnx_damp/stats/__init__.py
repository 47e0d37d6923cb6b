"""Statistics: per-class sums and Grams of every editable operator's input, local, sharded or on Ray."""
