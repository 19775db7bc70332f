"""Row order and labels of the Table 1/2 rows (``histlib.analysis.answer``)."""

import pandas as pd

from histlib.analysis import answer


def test_each_set_with_stain_follows_the_same_set_without():
    keys = [("real+synthetic+stain", "freeze_g2", "", ""), ("synthetic+stain", "freeze_g2", "", ""),
            ("real+synthetic", "freeze_g2", "", ""), ("real+stain", "", "", ""), ("synthetic", "freeze_g2", "", ""),
            answer.REAL_ROW]
    assert [k[0] for k in sorted(keys, key=answer._row_order)] == [
        "real", "real+stain", "synthetic", "synthetic+stain", "real+synthetic", "real+synthetic+stain"]


def test_the_generated_images_alone_with_stain_are_labelled_as_such():
    part = pd.DataFrame({"n_train_real": [0, 0], "n_train_synthetic": [932, 932]})
    label = answer.row_label(("synthetic+stain", "freeze_g2", "agree", "3x"), part)
    assert label == "932 generated with freezing freeze_g2 + stain augmentation, selected by agree, 3x"
