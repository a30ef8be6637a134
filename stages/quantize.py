"""quantize: convert the FP32 fused model to one variant's INT8 artifact using its saved ranges.

Reads params.yaml `variants.<variant>`; writes the artifact and variant.json to <out>/.
"""

import argparse
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True, help="fetch-pretrained output folder")
    parser.add_argument("--fused", type=Path, required=True, help="fuse stage output folder")
    parser.add_argument("--calibration", type=Path, required=True, help="calibrate stage output folder")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from nemo_ptq.backends import backend_for_variant
    from nemo_ptq.models.fp32 import load_fp32

    backend = backend_for_variant(args.variant, args.params, args.model)
    with stage_outputs(args.out):
        backend.quantize(load_fp32(args.fused, args.model), args.calibration, args.out)
        info = backend.describe(args.out)
    print(f"{args.variant}: {info.size_bytes / 1e6:.1f} MB, {info.int8_weight_layer_fraction:.0%} of weight "
          f"layers and {info.int8_weight_mac_fraction:.0%} of their MACs in INT8")


if __name__ == "__main__":
    run_stage(main)
