"""Training the project's embedded QuartzNet model: data synthesis, manifests, training, evaluation.

The package of the recipe in recipes/embedded/ (`run.py` drives it), installed on its own
(`pip install -e recipes/embedded`). It builds on the product, `nemo_ptq`: its text normalizer,
manifest reader, architecture configs, CTC decoding and machine description; the product, its
stages and dvc.yaml never import it.
"""
