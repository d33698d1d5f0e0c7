"""cloudbutton-jupyter: the distribution front door."""
