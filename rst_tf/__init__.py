"""rst-tf: Robust Scratch Tickets in Keras/TensorFlow."""


def __getattr__(name):
    """`rst_tf.masked_twin`, imported on first use (importing `rst_tf` alone does not import TensorFlow)."""
    if name == "masked_twin":
        from rst_tf.method.twin import masked_twin
        return masked_twin
    raise AttributeError(f"module 'rst_tf' has no attribute {name!r}")
