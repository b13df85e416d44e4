"""scikit-learn's own estimator checks, run on both aecore.sklearn estimators.

Tiny networks and two epochs keep the whole suite (about 90 checks, each
fitting a few times) to seconds on one core. No check is expected to fail.
The detector is not tagged ``outlier_detector`` (PyOD's 0/1 labels and
higher-is-more-anomalous scores are the opposite of what scikit-learn's
outlier checks assume), so those checks do not apply; everything else does.
"""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from aecore.sklearn import AutoencoderOutlierDetector, AutoencoderTransformer

SMALL = {"epochs": 2, "batch_size": 16, "params": {"encoder": {"hidden": (4,)}}}
ESTIMATORS = [AutoencoderTransformer(**SMALL), AutoencoderOutlierDetector(**SMALL)]


@parametrize_with_checks(ESTIMATORS, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_tags_say_what_the_estimators_are():
    transformer, detector = (get_tags(e) for e in ESTIMATORS)
    assert transformer.transformer_tags is not None and detector.transformer_tags is None
    assert transformer.transformer_tags.preserves_dtype == ["float64", "float32"]
    assert detector.estimator_type is None  # PyOD's conventions, not scikit-learn's outlier_detector
    for tags in (transformer, detector):
        assert not tags.target_tags.required and not tags.input_tags.allow_nan
        assert not tags.non_deterministic  # seeded CPU training repeats to the bit
    assert get_tags(AutoencoderTransformer(device="cuda")).non_deterministic
