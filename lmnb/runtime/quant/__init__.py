"""Quantized weights. Each mode is a module of its own (`fp8*`: FP8 e4m3 on CUDA GPUs with
FP8 support); the models take an optional `quant` object whose `make_linear` builds the
projection layers (attention q/k/v/o, MLP gate/up/down), so a mode never touches the model
code beyond that hook."""
