"""`structure=rows_cols`: whole rows (output features) and columns (input features) of every
weight matrix, as LLM Surgeon's structured pruning. Rows and columns compete under one
threshold; costs and updates come from the Kronecker factors (surgeon/method/kron.py)."""
from surgeon.structure.base import Structure


class RowsCols(Structure):
    name = "rows_cols"
    decided_by = "by method.allocation"
