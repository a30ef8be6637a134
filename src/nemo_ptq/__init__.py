"""Post-training static INT8 quantization of NeMo CTC ASR models for CPU, run as a DVC pipeline."""
