"""The peer of our search on OpenVINO: NNCF's `quantize_with_accuracy_control`, given the same
calibration utterances, the same dev utterances and the same budget, with the variant's NNCF preset
and bias correction.

Its validation function is 1 - WER against NeMo's FP32 hypotheses on the dev set, and its
max_drop (absolute) is the budget's max_wer_increase, so "drop <= max_drop" is our
"wer_vs_fp32 <= budget" (the FP32 IR scores ~1.0 against NeMo's own hypotheses). NNCF ranks and
reverts quantizers itself, on its own ops; we only build its input and save what it returns.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from nemo_ptq.accuracy.config import AccuracyBudget
from nemo_ptq.accuracy.trials import Trials
from nemo_ptq.errors import ConfigError
from nemo_ptq.evaluation.wer import wer
from nemo_ptq.models import export


def quantize_with_accuracy_control(trials: Trials, budget: AccuracyBudget, out_dir: Path) -> None:
    """Write an OpenVINO artifact (model.xml/.bin, tokens, layers.json) that NNCF's accuracy
    control made from the variant's calibration; `trials.backend` is an `ov` int8 variant."""
    import nncf
    import openvino as ov

    from nemo_ptq.backends import ov as ov_backend

    backend = trials.backend
    if backend.name != "ov" or backend.config.precision != "int8":
        raise ConfigError(f"NNCF's accuracy control is an OpenVINO peer: {backend.variant} is not an ov int8 variant")
    if budget.metric != "wer_vs_fp32":
        raise ConfigError("the NNCF peer compares with the FP32 model's hypotheses: use metric wer_vs_fp32")
    fp32, scorer = trials.fp32, trials.scorer
    features = export.feature_dim(fp32, backend.card)
    samples = backend._samples(backend.calibration_payload(trials.calibration_dir), features)
    table = backend.layer_table(fp32)

    def validate(compiled, items) -> tuple[float, None]:
        request = compiled.create_infer_request()
        references, hypotheses = [], []
        for index, feats in items:
            request.infer({0: feats})
            hypotheses.append(scorer.vocabulary.transcript(request.get_output_tensor(0).data.copy()))
            references.append(scorer.fp32_hypotheses[index])
        return 1.0 - wer(references, hypotheses), None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export.export_onnx(fp32, Path(tmp) / "model.onnx", features)
        names = export.onnx_layer_names(onnx.load(str(onnx_path)), table)
        model = ov.convert_model(onnx_path)
        fast_bias_correction, advanced = backend.nncf_bias_correction()
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(samples), nncf.Dataset(list(enumerate(scorer.features)), lambda item: item[1]),
            validate, max_drop=budget.max_wer_increase, drop_type=nncf.DropType.ABSOLUTE,
            preset=backend.nncf_preset(), subset_size=len(samples),
            fast_bias_correction=fast_bias_correction, advanced_quantization_parameters=advanced)
        ov.save_model(quantized, out_dir / ov_backend.MODEL, compress_to_fp16=False)
    export.write_tokens(out_dir / ov_backend.TOKENS, backend.card)
    backend.save_layers(out_dir, table, names)
