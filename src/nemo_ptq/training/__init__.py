"""Training the project's embedded QuartzNet model: data synthesis, manifests, training, evaluation.

Used only by the recipe in recipes/embedded/; the quantization pipeline never imports it.
"""
