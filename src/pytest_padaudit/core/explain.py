"""The framework-neutral words of each cause: adapters add the fix in their own idiom.

``handle.explain(cause, table, options, info)`` returns (cause code, likely cause, fix);
the texts here are the parts that read the same in every framework.
"""

from __future__ import annotations

#: ``nonfinite``: where nan/inf usually comes from on a padded batch.
NONFINITE = (
    "the model produced nan/inf on the padded batch (a division by a zero pad count, "
    "log(0) at pad positions)"
)
#: ``invariance`` at a batch-normalisation layer.
BATCH_STATISTICS = "its batch statistics include the pad positions"
#: ``invariance`` where no layer explains it: a pooling or mixing step (``{examples}``).
POOLING = "a pooling or mixing step treats pad positions as data ({examples})"
#: ``tied``: the way out that every framework has.
ALLOW_TIED = "accept it knowingly with allow=('tied',)"
#: ``optimizer`` (no decay, no constraint): a stateful update moved a row with no gradient.
STATEFUL = "{name} moved the row although its gradient is zero (momentum or a stateful update)"
STATEFUL_FIX = "exclude the table from that update, or zero the pad row"
#: ``forward``: the fix, with the framework's name of the forward method.
FORWARD_FIX = "do not modify the weight inside {method}"


def stateful(name: str) -> tuple[str, str, str]:
    """Return the words for a stateful optimizer that moved a row with no gradient."""
    return "optimizer", STATEFUL.format(name=name), STATEFUL_FIX
