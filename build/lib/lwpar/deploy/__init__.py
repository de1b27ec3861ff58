"""Deployment: ONNX export with parity (`export`), an artifact's own metadata (`artifact`), INT8
quantization (`quantize`), the interleaved benchmark and its worker (`benchmark`, `bench_worker`)
with the profile built on them (`profile`) and the `Timer` compression plans with, prediction
(`predict`, `video`), model cards (`card`) and bundles for a device (`bundle`); the runtimes an artifact
runs on, ONNX Runtime and OpenVINO (`runtimes`)."""
