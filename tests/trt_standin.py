"""A stand-in for a TensorRT execution context (no TensorRT exists on these machines): it records the
input shapes and tensor addresses bound to it and answers output shapes from a rule, so the binding
logic of EngineRunner and the TensorRT runtime can be tested on the CPU."""
from __future__ import annotations


class StandInContext:
    def __init__(self, output_shape):
        """``output_shape(shapes, name)``: the shape the engine would infer for output ``name`` from
        the input shapes bound so far (``shapes``: name -> shape)."""
        self.shapes, self.addr = {}, {}
        self._output_shape = output_shape

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def get_tensor_shape(self, name):
        return self._output_shape(self.shapes, name)
