"""The metrics against numbers worked out by hand, and AUC against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainer.metrics import (
    cohen_kappa,
    compare_predictions,
    compute_metrics,
    confusion_matrix,
    roc_auc,
    table3_markdown,
)

LABELS = ["a", "b", "c"]
# Fixed confusion matrix (rows true, columns predicted):
#        a  b  c
#   a [  5, 1, 0 ]   support 6
#   b [  2, 3, 1 ]   support 6
#   c [  0, 0, 4 ]   support 4      n = 16, correct = 12
CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def _from_cm(cm):
    y_true, y_pred = [], []
    for i, j in itertools.product(range(3), range(3)):
        y_true += [i] * cm[i, j]
        y_pred += [j] * cm[i, j]
    y_true = np.array(y_true)
    probs = np.full((len(y_pred), 3), 0.1)
    probs[np.arange(len(y_pred)), y_pred] = 0.8
    return y_true, probs


def test_confusion_matrix_and_hand_computed_metrics():
    y_true, probs = _from_cm(CM)
    np.testing.assert_array_equal(confusion_matrix(y_true, probs.argmax(1), 3), CM)
    m = compute_metrics(y_true, probs, LABELS)
    assert m["n"] == 16 and m["accuracy"] == pytest.approx(12 / 16)
    a, b, c = (m["per_class"][k] for k in LABELS)
    # a: tp 5, fp 2, fn 1, tn 8
    assert a["precision"] == pytest.approx(5 / 7) and a["recall"] == pytest.approx(5 / 6)
    assert a["specificity"] == pytest.approx(8 / 10)
    assert a["f1"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 1))
    # b: tp 3, fp 1, fn 3, tn 9
    assert b["precision"] == pytest.approx(3 / 4) and b["recall"] == pytest.approx(3 / 6)
    assert b["specificity"] == pytest.approx(9 / 10)
    # c: tp 4, fp 1, fn 0, tn 11
    assert c["precision"] == pytest.approx(4 / 5) and c["recall"] == 1.0
    assert c["specificity"] == pytest.approx(11 / 12)
    assert m["macro"]["recall"] == pytest.approx((5 / 6 + 3 / 6 + 1) / 3)
    assert m["weighted"]["recall"] == pytest.approx(12 / 16)  # weighted recall == accuracy
    # kappa: p_o = 12/16; p_e = (6*7 + 6*4 + 4*5) / 16^2 = 86/256
    p_e = 86 / 256
    assert m["kappa"] == pytest.approx((12 / 16 - p_e) / (1 - p_e))
    assert cohen_kappa(CM) == pytest.approx(m["kappa"])
    assert [s["support"] for s in m["per_class"].values()] == [6, 6, 4]


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 60) / 5.0  # many ties
    positive = rng.random(60) < 0.4
    pairs = [(p, q) for p in scores[positive] for q in scores[~positive]]
    brute = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs])
    assert roc_auc(scores, positive) == pytest.approx(brute)
    assert roc_auc(scores, np.zeros(60, bool)) is None
    assert roc_auc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0


def test_degenerate_class_never_predicted_and_absent():
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    m = compute_metrics(y_true, probs, LABELS)
    assert m["per_class"]["c"]["precision"] == 0.0 and m["per_class"]["c"]["auc"] is None
    assert m["macro"]["auc"] == pytest.approx(1.0)  # absent class left out of the macro AUC
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(y_true, probs[:, :2], LABELS)


def test_compare_predictions_and_table():
    y_true, probs = _from_cm(CM)
    other = probs.copy()
    other[0] = [0.1, 0.8, 0.1]  # one 'a' now predicted as 'b'
    cmp = compare_predictions(y_true, probs, other, LABELS)
    assert cmp["top1_agreement"] == pytest.approx(15 / 16)
    assert cmp["accuracy_delta"] == pytest.approx(-1 / 16)
    assert cmp["recall_delta"]["a"] == pytest.approx(-1 / 6)
    assert cmp["max_abs_prob_diff"] == pytest.approx(0.7)
    table = table3_markdown({"model X": compute_metrics(y_true, probs, LABELS)},
                            paper={"DSConv-CBAM": {"accuracy": 97.41}})
    assert "| model X | 75.00 |" in table and "DSConv-CBAM (paper) | 97.41" in table
    assert "| c | 80.00 | 100.00 |" in table


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from trainer.plots import plot_confusion_matrix, plot_history

    cm_png = plot_confusion_matrix(CM, LABELS, tmp_path / "cm.png")
    hist_png = plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
                             "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]},
                            tmp_path / "h.png")
    for png in (cm_png, hist_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# Two classes, counts chosen so every number is easy to check by hand:
#            pred 0  pred 1
#   true 0 [   20,     5  ]   support 25
#   true 1 [   10,    15  ]   support 25       n = 50, correct 35
# Cohen's kappa of this table is a textbook value: p_o = 35/50 = 0.7,
# p_e = (25*30 + 25*20) / 50^2 = 0.5, kappa = (0.7 - 0.5) / 0.5 = 0.4.
CM2 = np.array([[20, 5], [10, 15]])


def _from_cm2():
    y_true = np.array([0] * 25 + [1] * 25)
    y_pred = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    probs = np.stack([1 - 0.7 * y_pred - 0.1, 0.7 * y_pred + 0.1], axis=1)
    return y_true, probs


def test_two_class_textbook_values():
    y_true, probs = _from_cm2()
    m = compute_metrics(y_true, probs, ["neg", "pos"])
    assert m["confusion_matrix"] == CM2.tolist()
    assert m["kappa"] == pytest.approx(0.4)
    neg, pos = m["per_class"]["neg"], m["per_class"]["pos"]
    # neg: tp 20, fp 10, fn 5, tn 15; pos: tp 15, fp 5, fn 10, tn 20
    assert neg["precision"] == pytest.approx(20 / 30) and neg["recall"] == pytest.approx(0.8)
    assert pos["precision"] == pytest.approx(0.75) and pos["recall"] == pytest.approx(0.6)
    assert neg["specificity"] == pytest.approx(0.6) and pos["specificity"] == pytest.approx(0.8)
    f1_neg = 2 * (2 / 3) * 0.8 / (2 / 3 + 0.8)        # 0.72727...
    f1_pos = 2 * 0.75 * 0.6 / 1.35                     # 0.66666...
    assert neg["f1"] == pytest.approx(f1_neg) and pos["f1"] == pytest.approx(f1_pos)
    # macro F1 is the mean of per-class F1, not F1 of the macro precision/recall
    assert m["macro"]["f1"] == pytest.approx((f1_neg + f1_pos) / 2)
    assert m["macro"]["precision"] == pytest.approx((2 / 3 + 0.75) / 2)
    # equal supports: weighted == macro
    assert m["weighted"]["f1"] == pytest.approx(m["macro"]["f1"])
    # binary scores take two values: AUC = P(pos scores higher) + 1/2 P(tie)
    # pos scores 0.8 for 15 positives, 0.1 for 10; negatives: 0.8 for 5, 0.1 for 20
    auc = (15 * 20 + 0.5 * (15 * 5 + 10 * 20)) / (25 * 25)
    assert pos["auc"] == pytest.approx(auc)


def test_auc_against_brute_force_on_continuous_scores():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:20, 2] = probs[20:40, 2]            # plant exact ties
    m = compute_metrics(y, probs, ["a", "b", "c", "d"])
    for k, label in enumerate("abcd"):
        pos, neg = probs[y == k, k], probs[y != k, k]
        brute = ((pos[:, None] > neg[None, :]).sum()
                 + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
        assert m["per_class"][label]["auc"] == pytest.approx(brute, abs=1e-12)
    assert m["macro"]["auc"] == pytest.approx(
        np.mean([m["per_class"][c]["auc"] for c in "abcd"]))


def test_bad_inputs_are_clear_errors():
    probs = np.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="class index 5, outside 0..2"):
        compute_metrics([0, 1, 5], probs, LABELS)
    with pytest.raises(ValueError, match="one-hot"):
        compute_metrics(np.eye(3), probs, LABELS)
    with pytest.raises(ValueError, match="integer class indices"):
        compute_metrics([0.5, 1, 2], probs, LABELS)
    broken = probs.copy()
    broken[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite scores in 1 row"):
        compute_metrics([0, 1, 2], broken, LABELS)
    # float labels that are whole numbers are fine
    assert compute_metrics(np.array([0.0, 1.0, 2.0]), np.eye(3), LABELS)["accuracy"] == 1.0


def test_single_class_kappa_and_no_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from 0/0 anywhere
        m = compute_metrics([0, 0, 0], [[0.9, 0.1, 0.0]] * 3, LABELS)
    assert m["accuracy"] == 1.0 and m["kappa"] == 0.0
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                   "specificity": 1.0, "support": 0, "auc": None}
    assert m["per_class"]["a"]["auc"] is None   # no negatives: undefined
    assert m["macro"]["auc"] is None


def test_compare_predictions_lists_disagreements_and_recalls():
    y_true, probs = _from_cm(CM)
    other = probs.copy()
    other[[0, 13]] = [0.1, 0.1, 0.8]   # image 0 (true a) and 13 (true c, already c)
    cmp = compare_predictions(y_true, probs, other, LABELS)
    assert cmp["disagreements"] == 1 and cmp["disagreement_indices"] == [0]
    assert cmp["per_class_recall"]["a"] == pytest.approx(
        {"a": 5 / 6, "b": 4 / 6, "delta": -1 / 6})
    assert cmp["per_class_recall"]["c"]["delta"] == 0.0
    assert cmp["mean_abs_prob_diff"] == pytest.approx((0.7 + 0.7) / (16 * 3))
    with pytest.raises(ValueError, match="shape"):
        compare_predictions(y_true, probs, probs[:5], LABELS)
