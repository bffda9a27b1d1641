"""ONNX: ``export`` (torch -> ONNX, verified in onnxruntime against torch before it is
trusted), ``session`` (onnxruntime sessions and a torch-like callable), ``optimize``
(onnxruntime graph optimisation and int8 quantisation)."""
