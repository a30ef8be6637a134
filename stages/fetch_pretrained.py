"""fetch-pretrained: get the FP32 NeMo CTC model named by params.yaml `model.source`.

Writes <out>/model.nemo, <out>/card.json (class, encoder, parameters, vocabulary, sample rate,
sha256 of the checkpoint) and <out>/frontend.onnx (the model's preprocessor as an ONNX graph, for
artifacts that take waveforms; the card says why when a preprocessor cannot be exported).
A checkpoint whose sha256 differs from a pinned `model.sha256` is an error, found before the file
is opened.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from nemo_ptq.cli import run_stage, stage_outputs
from nemo_ptq.params import ModelParams, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = load_config(ModelParams, "model", args.params)
    from nemo_ptq.models.frontend import write_frontend
    from nemo_ptq.models.loading import ModelSource, describe, fetch

    source = ModelSource.parse(config.source)
    with stage_outputs(args.out):
        model, sha256 = fetch(source, config.sha256)
        card = describe(model, source, sha256)
        args.out.mkdir(parents=True)
        model.save_to(str(args.out / "model.nemo"))
        frontend, unsupported = write_frontend(model, args.out, card.sample_rate)
        card = dataclasses.replace(card, frontend=frontend, frontend_unsupported=unsupported)
        (args.out / "card.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
    print(f"{source}: {card.model_class} ({card.encoder}), {card.parameters / 1e6:.2f} M parameters, "
          f"{len(card.vocabulary)} tokens, {card.sample_rate} Hz")
    if unsupported:
        print(f"no waveform-input artifacts: {unsupported}")
    if sha256 is not None:
        print(f"sha256 {sha256}" + (" (pinned)" if config.sha256 else "; pin it with model.sha256 in params.yaml"))


if __name__ == "__main__":
    run_stage(main)
