"""Zero-shot and generalized zero-shot metrics on hand-made examples."""
import math

import numpy as np
import pytest

from fastzsl.metrics import gzsl_scores, per_class_mean_accuracy, zero_shot_accuracies


def test_metrics_on_a_hand_made_example():
    y = np.array(["a", "a", "b", "b", "u", "u", "u", "v"])
    p = np.array(["a", "u", "b", "b", "u", "a", "u", "u"])
    acc = zero_shot_accuracies(y, p, ["u", "v"])
    assert acc == {"seen_accuracy": 0.75, "unseen_accuracy": 0.5, "overall_accuracy": 5 / 8}
    assert per_class_mean_accuracy(y, p, ["u", "v"]) == pytest.approx((2 / 3 + 0) / 2)
    s = gzsl_scores(y, p, ["a", "b"], ["u", "v"])
    tr, ts = 0.75, 1 / 3
    assert s["harmonic_mean"] == pytest.approx(2 * tr * ts / (tr + ts))


def test_a_seen_image_called_unseen_is_an_error_and_vice_versa():
    y = np.array(["a", "u"])
    acc = zero_shot_accuracies(y, np.array(["u", "a"]), ["u"])
    assert acc == {"seen_accuracy": 0.0, "unseen_accuracy": 0.0, "overall_accuracy": 0.0}


def test_classes_without_test_images_are_left_out_and_no_images_give_nan():
    y = np.array(["a", "a", "b"])
    p = np.array(["a", "b", "b"])
    # "c" has no test images: the mean is over a (1/2) and b (1), not over three classes
    assert per_class_mean_accuracy(y, p, ["a", "b", "c"]) == pytest.approx(0.75)
    assert math.isnan(per_class_mean_accuracy(y, p, ["c"]))
    assert math.isnan(zero_shot_accuracies(y, p, ["u"])["unseen_accuracy"])


def test_per_class_mean_is_not_the_image_mean():
    # 9 images of "a" all right, 1 image of "b" wrong: image accuracy 0.9, per-class 0.5
    y = np.array(["a"] * 9 + ["b"])
    p = np.array(["a"] * 10)
    assert zero_shot_accuracies(y, p, [])["overall_accuracy"] == pytest.approx(0.9)
    assert per_class_mean_accuracy(y, p, ["a", "b"]) == pytest.approx(0.5)


def test_harmonic_mean_is_zero_when_both_sides_are_wrong():
    y = np.array(["a", "u"])
    s = gzsl_scores(y, np.array(["u", "a"]), ["a"], ["u"])
    assert s == {"seen_per_class_accuracy": 0.0, "unseen_per_class_accuracy": 0.0,
                 "harmonic_mean": 0.0}
