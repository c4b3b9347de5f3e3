"""`structure=rows_cols`: whole rows (output features) and columns (input features) of every
weight matrix, as LLM Surgeon's structured pruning.

Removing row r alone costs (OBS on F ~ G (x) A, Q the row's weights)
    L_r = 1/2 w_r^T A w_r / [G^-1]_rr,   and column c:   L_c = 1/2 w_c^T G w_c / [A^-1]_cc
(diagonal factors give OBD; an exact diagonal Fisher sums 1/2 w^2 F over the row or column).
Rows and columns compete under one threshold: a matrix losing r of R rows and c of C columns
loses rC + cR - rc weights (the overlap counted once), and the threshold is the largest cost at
which the total stays within the budget - per matrix (`method.allocation=layer`) or over the
whole model (`global`). A removed row takes its bias with it. Updates: none, or `correlated`, the
closed forms for whole rows and columns (surgeon/update/correlated.py).

`structure.coupled=true` (the default) counts what a decision frees in other matrices. A channel
(the adapter's `channels`: an FFN neuron = its gate/up rows and down column; a value channel =
a value row and the output-projection columns that read it) adds nothing once any silencing row
is gone (SiLU/GELU/ReLU(0) = 0) or all its reading columns are. So with
    s = min over its silencing rows of L_row,   c = max over its reading columns of L_col,
a producer row is priced min(L_row, s, c) and a reading column min(L_col, s): each slice goes at
the cheapest decision that removes it, and the global threshold's budget counts the weights the
model really loses (uncoupled, a removed down column leaves its neuron's gate/up rows as kept,
dead weights). Only the paying decision is updated; the rest of the channel is zeroed as it is,
which changes nothing the layer computes. A matrix's own budget cannot count what it frees in
another, so coupled, `allocation=layer` is one threshold per decoder layer.
"""
import torch

from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, Target, weight, write_back
from surgeon.update.correlated import cols_update, rows_update


class RowsCols(Structure):
    name = "rows_cols"

    def __init__(self, coupled: bool = True):
        self.coupled = coupled

    def check_method(self, update, scope, gradients):
        if update == "obs":
            raise SurgeonError("method.update=obs (SparseGPT's sequential OBS) needs an unstructured, N:M or "
                               "heads_neurons structure; rows_cols takes method.update=correlated|none")
        if scope == "row":
            raise SurgeonError("method.allocation=row ranks weights within rows; use layer or global for rows_cols")

    def targets(self, adapter, index, layer):
        channels = adapter.channels(layer) if self.coupled else None
        return [Target(index, name, lin, channels) for name, lin in adapter.prunable_linears(layer).items()]

    def costs(self, W, kron):
        """(row costs, column costs) of the weight columns (a bias column, last in W, goes with its row)."""
        C = W.shape[1] - int(kron.bias)
        if kron.exact is not None:
            E = 0.5 * W[:, :C] ** 2 * kron.exact
            return E.sum(1), E.sum(0)
        rows = 0.5 * (kron.A.rmatmul(W) * W).sum(1) / kron.G.inv_diag(W.shape[0], W)
        cols = 0.5 * (kron.G.matmul(W) * W).sum(0) / kron.A.inv_diag(W.shape[1], W)
        return rows, cols[:C]

    def decide(self, targets, factors, stats, sparsity, opts, update):
        own = [self.costs(weight(t, f), f) for t in targets for f in [factors(t)]]
        channels = _channels(targets) if self.coupled else []
        if opts.allocation == "global" or self.coupled:  # one threshold over the model, or per decoder layer
            priced = _priced(own, channels)
            group = (lambda t: 0) if opts.allocation == "global" else (lambda t: t.layer)
            tau = {g: self.threshold([p for p, t in zip(priced, targets) if group(t) == g], sparsity)
                   for g in {group(t) for t in targets}}
            paid = [(r <= tau[group(t)], c <= tau[group(t)]) for t, (r, c) in zip(targets, own)]
        else:  # each matrix its own threshold
            paid = [(r <= t, c <= t) for (r, c) in own for t in [self.threshold([(r, c)], sparsity)]]
        cut = _close(paid, channels, own)
        extras = {}
        for t, (pr, pc), (cr, cc) in zip(targets, paid, cut):
            f = factors(t)
            W, extras[(t.layer, t.name)] = self.remove(weight(t, f), (pr, pc, cr, cc), f, update, opts, sparsity)
            write_back(t.linear, W)
        return extras

    def select(self, costs, sparsity, scope):
        """(rows, cols) indices per matrix: everything at or below the threshold (uncoupled)."""
        if scope != "global":
            return [self.select([rc], sparsity, "global")[0] for rc in costs]
        tau = self.threshold(costs, sparsity)
        return [(torch.nonzero(r <= tau).flatten(), torch.nonzero(c <= tau).flatten()) for r, c in costs]

    @staticmethod
    def threshold(costs, sparsity):
        """The largest cost at which rows and columns at or below it remove at most `sparsity` of
        the matrices' weights (-inf: not even the cheapest fits)."""
        sorted_r = [torch.sort(r).values for r, _ in costs]
        sorted_c = [torch.sort(c).values for _, c in costs]
        shapes = [(len(r), len(c)) for r, c in costs]
        budget = int(sparsity * sum(R * C for R, C in shapes))

        def removed(tau) -> int:
            total = 0
            for sr, sc, (R, C) in zip(sorted_r, sorted_c, shapes):
                nr = int(torch.searchsorted(sr, tau, right=True))
                nc = int(torch.searchsorted(sc, tau, right=True))
                total += nr * C + nc * R - nr * nc
            return total

        candidates = torch.sort(torch.cat([*sorted_r, *sorted_c])).values
        lo, hi = -1, len(candidates) - 1  # invariant: removed(candidates[lo]) <= budget (lo=-1: none)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if removed(candidates[mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return candidates[lo] if lo >= 0 else candidates.new_tensor(float("-inf"))

    def remove(self, W, decision, kron, update, opts, sparsity):
        """decision: (rows, cols) removed with an update, (rows, cols) zeroed - masks or indices."""
        rows, cols, *cut = decision
        zero_r, zero_c = cut or (rows, cols)
        if update == "correlated":
            W = rows_update(W, kron.Ginv(W), _indices(rows), int(opts.max_correlate))
            W = cols_update(W, kron.Ainv(W), _indices(cols), int(opts.max_correlate))
        zero_r, zero_c = _indices(zero_r), _indices(zero_c)
        W[zero_r, :] = 0.0
        W[:, zero_c] = 0.0
        out = {"rows_removed": len(zero_r), "cols_removed": len(zero_c)}
        if cut:
            out.update(rows_freed=len(zero_r) - len(_indices(rows)), cols_freed=len(zero_c) - len(_indices(cols)))
        return W, out


def _indices(x):
    return torch.nonzero(x).flatten() if x.dtype == torch.bool else x


def _channels(targets):
    """(Units, consumer's target index, producers' target indices) of every channel family whose
    linears are all targets (an expert left dense for want of tokens is not)."""
    at = {id(t.linear): i for i, t in enumerate(targets)}
    seen, out = set(), []
    for t in targets:
        for u in t.units or []:
            members = [u.consumer, *u.producers]
            if id(u) in seen or not all(id(m) in at for m in members):
                continue
            seen.add(id(u))
            out.append((u, at[id(u.consumer)], [at[id(p)] for p in u.producers]))
    return out


def _silenced_read(u, p, own, j):
    """(s, c) per channel: the cheapest silencing row's cost, the dearest reading column's."""
    s = torch.stack([own[p[k]][0][u.rows[k][:, 0]] for k in u.silencers]).amin(0) if u.silencers else None
    return s, own[j][1][u.cols].amax(1)


def _priced(own, channels):
    """Each row and column at the cheapest decision that removes it (see the module docstring)."""
    priced = [(r.clone(), c.clone()) for r, c in own]
    for u, j, p in channels:
        s, c = _silenced_read(u, p, own, j)
        dead = c if s is None else torch.minimum(s, c)
        for k, rows in zip(p, u.rows):
            priced[k][0][rows[:, 0]] = torch.minimum(priced[k][0][rows[:, 0]], dead)
        if s is not None:
            priced[j][1][u.cols] = torch.minimum(priced[j][1][u.cols], s.unsqueeze(1))
    return priced


def _close(paid, channels, own):
    """(rows, cols) masks to zero: the paid ones and every slice of a channel they silenced. A
    channel whose reading columns were all cheaper than its silencing rows is paid by the columns
    (its rows go free, without an update), else by the rows (its columns go free)."""
    cut = [(r.clone(), c.clone()) for r, c in paid]
    for u, j, p in channels:
        silenced = torch.zeros(u.count, dtype=torch.bool, device=paid[j][1].device)
        for k in u.silencers:
            silenced |= paid[p[k]][0][u.rows[k][:, 0]]
        unread = paid[j][1][u.cols].all(1)
        dead = silenced | unread
        for k, rows in zip(p, u.rows):
            cut[k][0][rows[dead, 0]] = True
        cut[j][1][u.cols[dead]] = True
        s, c = _silenced_read(u, p, own, j)
        by_cols = unread & (c <= s) if s is not None else unread
        for k, rows in zip(p, u.rows):
            paid[k][0][rows[by_cols, 0]] = False  # their output is unread: no update for them
        paid[j][1][u.cols[dead & ~by_cols]] = False  # their input is zero: no update either
    return cut
