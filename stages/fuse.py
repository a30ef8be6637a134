"""fuse: rewrite the NeMo model into a quantizable FP32 module and prove it is equivalent.

Writes <out>/fused_spec.json, <out>/fused_weights.pt and <out>/equivalence.json; fails if the
rewrite's log-probs differ from NeMo's own forward by more than params.yaml `fuse.tolerance`
on any evaluation utterance.
"""

import argparse
import json
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs
from nemo_ptq.params import FuseParams, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output folder")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = load_config(FuseParams, "fuse", args.params)
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.models.equivalence import check_equivalence
    from nemo_ptq.errors import UnsupportedModelError
    from nemo_ptq.models.fp32 import write_kind
    from nemo_ptq.models.fused import rewrite
    from nemo_ptq.models.loading import load_nemo

    with stage_outputs(args.out):
        model = load_nemo(args.model / "model.nemo")
        args.out.mkdir(parents=True)
        try:
            fused = rewrite(model)
        except UnsupportedModelError as err:
            # Not QuartzNet/Jasper: export-based backends take NeMo's own modules; eager ones refuse.
            write_kind(args.out, "nemo", reason=str(err))
            print(f"no quantizable rewrite ({err}); export-based backends will use NeMo's modules")
            return
        utterances = [utt for _, utt in PreparedData.load(args.prepared).iter_eval()]
        report = check_equivalence(model, fused, utterances, config.tolerance)
        fused.save(args.out)
        write_kind(args.out, "fused")
        (args.out / "equivalence.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"rewrite matches NeMo: max |Δ log-prob| = {report['max_abs_diff']:.2e} "
          f"over {report['utterances']} utterances (tolerance {config.tolerance:g})")


if __name__ == "__main__":
    run_stage(main)
