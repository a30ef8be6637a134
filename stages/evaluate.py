"""Stage evaluate: accuracy, fidelity to FP32, latency, size and INT8 coverage of one variant.

    python stages/evaluate.py --variant onednn --model data/model --prepared data/prepared \
        --artifact data/quantized/onednn --fp32-transcripts data/evaluation/fp32 --params params.yaml \
        --out-metrics metrics/onednn.json --out-transcripts data/evaluation/onednn

`--variant fp32` (no --artifact, no --fp32-transcripts) evaluates NeMo's own FP32 eager model.
Afterwards the run is mirrored to MLflow (see nemo_ptq.tracking); that step never fails the stage.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="a key of params.yaml variants, or fp32")
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output (model.nemo, card.json)")
    parser.add_argument("--prepared", type=Path, required=True, help="prepare output")
    parser.add_argument("--artifact", type=Path, help="quantize output of this variant (not for fp32)")
    parser.add_argument("--fp32-transcripts", type=Path, help="evaluate-fp32 transcripts (not for fp32)")
    parser.add_argument("--budget-of", help="the variant whose accuracy search made --artifact (search stage); "
                        "--variant then names the row, <variant>_budget")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-metrics", type=Path, required=True)
    parser.add_argument("--out-transcripts", type=Path, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch  # after run_stage has quieted the environment

    from nemo_ptq import tracking
    from nemo_ptq.errors import ConfigError
    from nemo_ptq.evaluation.evaluate import FP32, evaluate, variant_entry, write_metrics
    from nemo_ptq.evaluation.transcripts import write_transcripts
    from nemo_ptq.params import EvaluateParams, load_config, load_section

    if args.variant == FP32 and (args.artifact or args.fp32_transcripts):
        raise ConfigError("--variant fp32 is NeMo's own model: drop --artifact and --fp32-transcripts")
    params = load_config(EvaluateParams, "evaluate", args.params)
    if args.budget_of:
        from nemo_ptq.evaluation.evaluate import searched_entry

        entry = searched_entry(load_section("variants", args.params), args.budget_of, args.variant, args.artifact)
    else:
        entry = variant_entry(load_section("variants", args.params), args.variant)
    torch.set_num_threads(params.threads)

    with stage_outputs(args.out_metrics, args.out_transcripts):
        result = evaluate(
            variant=args.variant,
            entry=entry,
            model_dir=args.model,
            prepared_dir=args.prepared,
            params=params,
            artifact_dir=args.artifact,
            fp32_transcripts=args.fp32_transcripts,
        )
        write_metrics(args.out_metrics, result.metrics)
        write_transcripts(args.out_transcripts, result.transcripts)

    # MLflow params: everything that configured this run; inputs: what the fingerprint hashes.
    config = {
        "variant": args.variant,
        "model": {"source": result.metrics["model"]["source"]},
        "backend": result.metrics["backend"],
        "options": {k: v for k, v in (entry or {}).items() if k != "backend"},
        "evaluate": asdict(params),
    }
    manifests = [args.prepared / name / "manifest.jsonl" for name in result.metrics.get("sets", {})]
    inputs = [args.model, args.prepared / "summary.json", *manifests, *([args.artifact] if args.artifact else [])]
    tracking.log_safely(
        tracking.log_evaluation,
        variant=args.variant,
        params=config,
        metrics=result.metrics,
        inputs=inputs,
        metrics_file=args.out_metrics,
        transcripts_dir=args.out_transcripts,
    )


if __name__ == "__main__":
    run_stage(main)
