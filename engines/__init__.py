"""TensorRT engine builds, trtexec command lines and the engine runner."""
