"""What every structure shares: no column pattern, the target is the asked sparsity, and (for
whole-unit structures) masks come from the method's allocation, not from per-element costs."""


class Structure:
    name = ""
    period = None       # no column pattern: a selection may span a whole block
    decided_by = ""     # where whole-unit structures are decided (select() is not theirs)

    def check(self, in_features: int) -> None:
        pass

    def target(self, sparsity: float) -> float:
        return sparsity

    def select(self, costs, sparsity, scope="layer"):
        raise ValueError(f"structure={self.name} is decided {self.decided_by}, not per element")
