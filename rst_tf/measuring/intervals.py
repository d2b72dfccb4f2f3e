"""95% Wilson score intervals for accuracies measured on a finite number of test images.

For k correct of n, with z the normal quantile (1.96 for 95%) and p = k / n:

    centre = (p + z^2 / (2n)) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

The interval stays inside [0, 1] and is not degenerate at 0% or 100%, unlike the normal approximation.
"""
import math

Z_95 = 1.959963984540054


def wilson_interval(correct, total, z=Z_95):
    """(low, high) in [0, 1] for `correct` successes out of `total` trials; (nan, nan) when `total` is 0."""
    if total <= 0:
        return float("nan"), float("nan")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be in [0, {total}], got {correct}")
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(accuracy, total, z=Z_95):
    """The Wilson interval of an accuracy in [0, 1] measured on `total` examples (its count rounded)."""
    return wilson_interval(int(round(accuracy * total)), total, z)


def with_interval(accuracy, total):
    """{accuracy, num_examples, interval: [low, high]}: an accuracy as the reports write it to JSON."""
    return {"accuracy": float(accuracy), "num_examples": int(total),
            "interval": list(accuracy_interval(accuracy, total))}


def format_accuracy(accuracy, total, digits=1):
    """'21.1% [18.7, 23.7]': the accuracy and its 95% Wilson interval, in percent."""
    if not total:
        return f"{100 * accuracy:.{digits}f}%"
    low, high = accuracy_interval(accuracy, total)
    return f"{100 * accuracy:.{digits}f}% [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"
