"""Reading compiled-program structure in tests: every equation of a jaxpr, sub-jaxprs included
(imported by test_ops and test_i3d)."""
from typing import Iterator

import jax
import jax.extend.core


def equations(jaxpr) -> Iterator:
    """Every equation of `jaxpr` and of the jaxprs in its equations' parameters (pjit, custom
    VJP/VMAP rules, scans), depth first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(sub)
