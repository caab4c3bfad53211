"""The FVD metrics: regressions for defects the fuzzing campaign found (issue 15; the campaign runs in test_fuzz.py),
one or more asserts each.

The Fréchet distance refuses statistics whose result overflows and complex covariances, rather than returning infinity
or a complex number.
"""

from __future__ import annotations

import numpy as np
import pytest

from latte_rs.evaluation.metrics import frechet_distance


def test_a_frechet_distance_that_overflows_or_is_complex_is_an_error():
    with pytest.raises(ValueError, match="overflowed"):
        frechet_distance(np.full(2, 1e200), np.eye(2) * 1e300, np.zeros(2), np.eye(2))
    with pytest.raises(TypeError, match="real-valued"):
        frechet_distance(np.zeros(2), np.eye(2, dtype=complex), np.zeros(2), np.eye(2))
