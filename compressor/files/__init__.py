"""Files, with no model knowledge: ``atomic`` writes, ``tensors`` files read without
unpickling, ``safetensors_header`` validated before any tensor is read."""
