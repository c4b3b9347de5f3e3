"""`structure=rows_cols`: whole rows (output features) and columns (input features) of every
weight matrix, as LLM Surgeon's structured pruning. Rows and columns compete under one
threshold; costs and updates come from the Kronecker factors (surgeon/method/kron.py)."""


class RowsCols:
    name = "rows_cols"
    period = None

    def check(self, in_features: int) -> None:
        pass

    def target(self, sparsity: float) -> float:
        return sparsity

    def select(self, costs, sparsity, scope="layer"):
        raise ValueError("structure=rows_cols is decided by method.allocation, not per element")
