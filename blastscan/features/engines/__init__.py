"""What runs a backbone's network: one module per engine (ONNX Runtime's runner lives in
:mod:`blastscan.features.onnx_engine` beside the exporter that writes the graph both engines read;
:mod:`blastscan.features.engines.openvino`). Which engine runs is decided in
:mod:`blastscan.features.precision`."""
