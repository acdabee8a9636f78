from __future__ import annotations

from lungxray.compare.leaderboard import leaderboard, plot_leaderboard


def lb_rows():
    return [
        {"model": "vgg16", "val_macro_recall": 0.90, "test_macro_recall": 0.95, "test_accuracy": 0.91,
         "test_macro_auc": 0.97, "test_macro_auc_ci_low": 0.96, "test_macro_auc_ci_high": 0.98,
         "trainable_parameters": 134_000_000, "seconds_per_epoch": 100.0, "epochs_to_converge": 12,
         "images_per_s": 50.0},
        {"model": "resnet18", "val_macro_recall": 0.90, "val_macro_recall_ci_low": 0.88,
         "val_macro_recall_ci_high": 0.92, "test_macro_recall": 0.85, "test_accuracy": 0.90, "test_macro_auc": 0.96,
         "trainable_parameters": 11_000_000, "seconds_per_epoch": 300.0, "epochs_to_converge": 9,
         "images_per_s": 400.0},
        {"model": "cnn5", "val_macro_recall": 0.80, "test_macro_recall": 0.99, "test_accuracy": 0.85,
         "test_macro_auc": 0.93, "trainable_parameters": 500_000},
        {"model": "broken", "val_macro_recall": None, "test_macro_recall": 1.0},
    ]


def test_leaderboard_is_ordered_by_the_val_selection_metric_not_by_test(tmp_path):
    df, md = leaderboard(lb_rows())
    assert df["model"].tolist() == ["resnet18", "vgg16", "cnn5", "broken"]  # tie -> fewer parameters; test ignored
    assert df["rank"].tolist() == [1, 2, 3, 4]
    note, table = md.split("\n\n", 1)
    assert "Ranked by `val_macro_recall`" in note and "fewer `trainable_parameters`" in note
    assert "Test figures are reported once" in note and "not used for selection" in note
    assert table.splitlines()[0].startswith("| # | model | val macro recall [95% CI] (selection) | test macro recall")
    assert "0.9000 [0.8800, 0.9200]" in table and "11,000,000" in table
    assert len(table.strip().splitlines()) == 2 + 4
    out = plot_leaderboard(df, tmp_path / "lb.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_leaderboard_uses_the_configured_tie_breaker_and_direction():
    from lungxray.compare.promote import PromotionParams

    by_speed = PromotionParams(tie_breaker="seconds_per_epoch")
    df, _ = leaderboard(lb_rows(), by_speed)
    assert df["model"].tolist()[:2] == ["vgg16", "resnet18"]  # 100 s/epoch beats 300 in the tie
    df, md = leaderboard(lb_rows(), PromotionParams(metric="test_macro_recall"))
    assert df["model"].tolist()[0] == "broken" and "Selection uses a **test** metric" in md


def test_a_model_no_better_than_the_majority_class_is_flagged_on_the_leaderboard():
    from lungxray.compare.leaderboard import no_skill_columns

    def evaluation(acc, lo, hi, lift_lo, lift_hi):
        figures = {"accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "lift_over_majority": acc - .625,
                   "lift_ci_low": lift_lo, "lift_ci_high": lift_hi, "no_better_than_majority": lo <= .625 <= hi,
                   "no_skill": {"majority_class": "pneumonia", "majority_share": .625}}
        return {"test": None, "val": figures}

    rows = lb_rows()[:2]
    rows[0] |= no_skill_columns(evaluation(.63, .59, .67, -.01, .02))
    rows[1] |= no_skill_columns(evaluation(.90, .87, .93, .25, .31))
    df, md = leaderboard(rows)
    assert df.set_index("model").loc["vgg16", "val_no_better_than_majority"] == True  # noqa: E712 (numpy bool)
    assert "| no-skill line |" in md.splitlines()[2]
    assert "**val: no better than always answering pneumonia (62.5% of the images)**" in md
    assert "val: no-skill: always pneumonia 62.5%, lift +27.5 points [+25.0, +31.0]" in md
