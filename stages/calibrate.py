"""calibrate: run one variant's calibration utterances through its backend and save the ranges.

Reads params.yaml `variants.<variant>`; writes <out>/variant.json, the backend's
calibration payload (ranges, observer state, ...) and utterances.txt (the utterances it saw).
"""

import argparse
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output folder")
    parser.add_argument("--fused", type=Path, required=True, help="fuse stage output folder")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from nemo_ptq.backends import backend_for_variant
    from nemo_ptq.backends.calibration import select_utterances
    from nemo_ptq.data.prepared import PreparedData
    from nemo_ptq.models.fp32 import load_fp32

    backend = backend_for_variant(args.variant, args.params, args.model)
    pool = PreparedData.load(args.prepared).calibration_set.utterances()
    chosen = select_utterances(pool, backend.calibration_sample())  # none for an FP32 variant
    with stage_outputs(args.out):
        from tqdm import tqdm

        features = (utt.features() for utt in tqdm(chosen, desc=f"calibrate {args.variant}", unit="utt"))
        backend.calibrate(load_fp32(args.fused, args.model), features, args.out)
        (args.out / "utterances.txt").write_text("".join(f"{utt.id}\n" for utt in chosen))
    print(f"{args.variant}: calibrated on {len(chosen)} of {len(pool)} utterances")


if __name__ == "__main__":
    run_stage(main)
