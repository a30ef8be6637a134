"""Accuracy-aware INT8 (issue 11): which layers hurt when quantized, and the fastest model that
keeps a WER budget, measured on the dev set only (never on the eval sets).

    config       the `sensitivity` and `accuracy.<variant>` sections of params.yaml
    groups       the model's weight layers in groups that stay float together (depthwise + pointwise)
    dev          scores an artifact on the dev set against the FP32 model: WER vs FP32, WER, logit SQNR
    trials       quantizes one variant with chosen float layers from its one calibration, and scores it
    sensitivity  one trial per group kept float: the ranked table
    search       the greedy search that keeps the top-ranked groups in float until the budget holds
"""
